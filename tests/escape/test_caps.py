"""Resource caps end to end: a hostile agent cannot exhaust the host through corral's helpers.

The disk floor (``corral.sandbox.diskspace``), the proxy's connection and buffer caps and its
cgroup (``corral.proxy.server``, ``corral.runtime.egress``), the audit budget
(``corral.audit.budget``). Each test has a control showing the cap, not the workload, stopped it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs mounted for the test (unmounted after, also on failure)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_refuses_to_start_with_one_line_125(corral, small_fs: Path) -> None:
    home = small_fs / "state"
    done = corral("--", "/bin/true", env={"CORRAL_HOME": str(home)})
    assert done.returncode == 125, done
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert "not enough free disk space for the state dir" in lines[0]
    assert "CORRAL_MIN_FREE" in lines[0]
    # control: the same filesystem with a floor it meets
    ok = corral("--", "/bin/true", env={"CORRAL_HOME": str(home), "CORRAL_MIN_FREE": "16MiB"})
    assert ok.returncode == 0, ok


@pytest.mark.parametrize("value, expected", [
    (None, (1024**3, 5.0)), ("1GiB,5%", (1024**3, 5.0)), ("512MiB", (512 * 1024**2, 0.0)),
    ("2%", (0, 2.0)), ("0", (0, 0.0)), (" 2GiB , 10% ", (2 * 1024**3, 10.0)),
])
def test_min_free_setting(value: str | None, expected: tuple[int, float],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.sandbox.diskspace import ENV, floors

    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    assert floors() == expected


@pytest.mark.parametrize("bad", ["lots", "5%%", "120%", "-1GiB", "1GB"])
def test_min_free_setting_malformed_fails_closed(bad: str) -> None:
    from corral.errors import CorralError
    from corral.sandbox.diskspace import floors

    with pytest.raises(CorralError) as err:
        floors(bad)
    assert err.value.exit_code == 125


# -- the proxy: its cgroup and its connection cap ---------------------------------------------

HALF_HEADS = r"""
import resource, socket, sys
n = int(sys.argv[1])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
head = b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\nX-Pad: " + b"a" * 61440
print("up", flush=True)
sys.stdin.readline()
socks, failed = [], 0
for _ in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", 15001), timeout=2)
        s.sendall(head)  # never the blank line that ends the head
        socks.append(s)
    except OSError:
        failed += 1
print("opened", len(socks), "failed", failed, flush=True)
sys.stdin.readline()
"""


def _events(state: str, type_: str) -> list[dict[str, object]]:
    from corral.audit.query import iter_events, open_read

    con = open_read(Path(state) / "audit.db")
    try:
        return [e.data for e in iter_events(con, types=[type_])]
    finally:
        con.close()


def _proxy_pid(state: str, timeout: float = 10.0) -> tuple[int, dict[str, object]]:
    import json
    import os
    import time

    deadline = time.monotonic() + timeout
    while True:
        entries = list((Path(state) / "sandboxes").glob("*.json"))
        if entries:
            entry = json.loads(entries[0].read_text())
            for helper in entry["helper_uids"]:
                for name in os.listdir("/proc"):
                    if name.isdigit():
                        try:
                            if os.stat(f"/proc/{name}").st_uid == helper:
                                return int(name), entry
                        except OSError:
                            continue
        assert time.monotonic() < deadline, "no proxy process found"
        time.sleep(0.05)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class _Workload:
    """A ``corral run`` whose command is ``script`` (it prints "up", waits for a line, does its
    work, prints "opened ...", waits for a line): started, its proxy found and measured at
    rest; ``go()`` starts the work; ``finish()`` lets the command end and checks it did."""

    def __init__(self, privileged: dict[str, str], policy: Path, script: str,
                 args: list[str], env: dict[str, str] | None = None) -> None:
        import os
        import sys
        import time

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "run", "-p", str(policy), "--",
             "/usr/bin/python3", "-c", script, *args],
            env={**os.environ, **privileged, **(env or {})},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        try:
            assert self.stdout.readline() == "up\n"
            self.pid, self.entry = _proxy_pid(privileged["CORRAL_HOME"])
            time.sleep(0.5)  # serving
            self.before = _rss(self.pid)
        except BaseException:
            self.kill()
            raise

    def go(self) -> str:
        self.stdin.write("go\n")
        self.stdin.flush()
        return self.stdout.readline()

    def grown(self) -> int:
        return _rss(self.pid) - self.before

    def finish(self) -> None:
        self.stdin.write("\n")
        self.stdin.flush()
        self.proc.wait(timeout=60)
        assert self.proc.returncode == 0, self.proc.stderr.read() if self.proc.stderr else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_half_sent_heads_cannot_grow_the_proxy(privileged: dict[str, str],
                                                tmp_path: Path) -> None:
    """3000 connections each holding 60 KiB of an unfinished request head, in a sandbox
    limited to 256 MiB (so 256 proxy connections): the proxy serves at most its cap, its
    memory stays bounded, the refusals are audited once per burst, not once per connection,
    and the proxy is in the sandbox's cgroup (so its memory counts towards the sandbox's)."""
    import time

    from corral.runtime.egress import proxy_caps

    state = privileged["CORRAL_HOME"]
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nlimits: {memory: 256MiB}\n"
                      "egress:\n  - host: example.test\n    action: deny\n")
    cap = proxy_caps(256 * 1024**2)["connections"]
    assert cap == 256
    run = _Workload(privileged, policy, HALF_HEADS, ["3000"])
    try:
        groups = Path(f"/proc/{run.pid}/cgroup").read_text()
        opened = run.go()
        assert opened.startswith("opened"), opened
        time.sleep(1.0)  # what was sent is read by now
        grown = run.grown()
        run.finish()
    finally:
        run.kill()
    entry = run.entry
    memory_line = next(ln for ln in groups.splitlines() if ln.split(":")[1] in ("memory", ""))
    assert memory_line.endswith(f"/{entry['cgroup']}"), groups
    # the cap's worth of 60 KiB heads and connections, with room for the allocator: 3000
    # connections grew it by ~200 MiB before the cap
    assert grown < 48 * 1024**2, f"the proxy grew by {grown >> 20} MiB"
    limits = [e for e in _events(state, "sandbox.limit") if e["limit"] == "proxy.connections"]
    assert 1 <= len(limits) <= 3, limits  # one per burst of refusals
    assert limits[0]["value"] == str(cap)


PIPELINED = r"""
import socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
req = f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
more = req * (4 * 1024 * 1024 // len(req))  # requests queued behind one never answered
print("up", flush=True)
sys.stdin.readline()
socks, sent, reset = [], 0, 0
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", 15001), timeout=3)
    socks.append(s)
    s.sendall(req)
    s.setblocking(False)
    try:
        while True:  # as much as the kernel takes now; the proxy reads it meanwhile
            sent += s.send(more[sent % len(more):][:65536])
    except BlockingIOError:
        pass
    except OSError:  # the proxy reset it
        reset += 1
print("opened", len(socks), "sent", sent, "reset", reset, flush=True)
sys.stdin.readline()
"""


def test_pipelined_bytes_cannot_grow_the_proxy_past_its_buffer_cap(
        privileged: dict[str, str], tmp_path: Path) -> None:
    """40 connections each send a request to an upstream that never answers and megabytes of
    requests behind it: the proxy reads them into its buffers while it waits (up to ~2 MiB a
    connection, ~90 MiB here), so under a 16 MiB buffer cap it resets connections instead,
    grows by little and audits the refusal as one ``proxy.buffered`` event. The connection
    cap (512 for 512 MiB) is far away: only the buffer cap can stop it."""
    import socket
    import threading
    import time

    state = privileged["CORRAL_HOME"]
    upstream = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    port = upstream.getsockname()[1]
    accepted: list[socket.socket] = []

    def hold() -> None:
        while True:
            try:
                accepted.append(upstream.accept()[0])
            except OSError:
                return

    threading.Thread(target=hold, daemon=True).start()
    policy = tmp_path / "p.yaml"
    policy.write_text(f"name: p\nlimits: {{memory: 512MiB}}\negress:\n  - host: 127.0.0.1\n"
                      f"    ports: [{port}]\n    action: inspect\n")
    cap = 16 * 1024**2
    run = _Workload(privileged, policy, PIPELINED, ["40", str(port)],
                    {"CORRAL_PROXY_MAX_BUFFERED": "16MiB"})
    try:
        opened = run.go()
        assert opened.startswith("opened 40"), opened
        grown = 0
        for _ in range(20):  # what the kernel holds reaches the proxy meanwhile
            time.sleep(0.1)
            grown = max(grown, run.grown())
        run.finish()
    finally:
        run.kill()
        upstream.close()
        for sock in accepted:
            sock.close()
    assert accepted, "no request reached the upstream: the workload did not run"
    # the cap's worth and the allocator's slack; ~90 MiB without the cap
    assert grown < 40 * 1024**2, f"the proxy grew by {grown >> 20} MiB"
    limits = [e for e in _events(state, "sandbox.limit") if e["limit"] == "proxy.buffered"]
    assert 1 <= len(limits) <= 3, limits  # one per burst of resets
    assert limits[0]["value"] == str(cap)
    assert not [e for e in _events(state, "sandbox.limit") if e["limit"] == "proxy.connections"]


# -- the audit trail: a DNS flood ---------------------------------------------------------------

DNS_FLOOD = r"""
import os, select, socket, struct, sys, time

def query(name, qid):
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", 15053))
s.setblocking(False)
sent = answered = 0
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(64):
        try:
            s.send(query("evil.test", sent % 60000))
            sent += 1
        except BlockingIOError:
            break
    while select.select([s], [], [], 0.0005)[0]:
        try:
            s.recv(512)
            answered += 1
        except OSError:
            break
s.setblocking(True)
s.settimeout(1)
distinct = 0
for i in range(int(sys.argv[2])):  # each its own name: each must be recorded
    for _try in range(20):  # UDP: a query may be dropped while the flood drains; ask again
        s.send(query(f"n{i}.other.test", 65000 + i))
        try:
            while struct.unpack(">H", s.recv(512)[:2])[0] != 65000 + i:
                pass
        except TimeoutError:
            continue
        distinct += 1
        break
print("sent", sent, "answered", answered, "distinct", distinct, flush=True)
"""


@pytest.mark.parametrize("rules", [True, False], ids=["proxy", "no-egress-rules"])
def test_dns_flood_writes_a_bounded_count_of_events(corral, tmp_path: Path,
                                                    privileged: dict[str, str],
                                                    rules: bool) -> None:
    """4 s of DNS queries for one denied name as fast as the agent can: tens of thousands of
    queries, a few dozen events, whose counts add up to every query answered; 30 distinct
    names asked once each still get one event each; the flood is recorded once. The same
    without egress rules, where the launcher's own stub (``corral.runtime.attempts``) records
    the queries instead of a proxy."""
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\negress:\n  - host: example.test\n    action: deny\n")
    done = corral(*(["-p", str(policy)] if rules else []), "--", "/usr/bin/python3", "-c",
                  DNS_FLOOD, "4", "30", timeout=120)
    assert done.returncode == 0, done
    words = done.out.split()
    answered, distinct = int(words[3]), int(words[5])
    assert distinct == 30
    events = _events(privileged["CORRAL_HOME"], "dns.query")
    evil = [e for e in events if e["name"] == "evil.test"]
    counted = sum(int(e.get("count", 1)) for e in evil)  # type: ignore[call-overload]
    # every answered query is in the trail (its own event or a counted one); a query that
    # was recorded but whose answer the agent missed (socket buffer) counts too
    assert counted >= answered > 1000, (counted, answered)
    # a few events per second of flood, not one per query
    assert len(evil) <= 6 * 8, len(evil)
    names = [e["name"] for e in events]
    assert all(names.count(f"n{i}.other.test") >= 1 for i in range(30))
    floods = _events(privileged["CORRAL_HOME"], "audit.flood")
    assert len(floods) <= 2, floods
