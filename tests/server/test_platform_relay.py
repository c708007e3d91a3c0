"""``action: platform`` end to end: a real ``corral run --project`` sandbox, its proxy, the real
``corral server`` process and its relay, and the outside host over TLS in a test network
namespace. The relay injects a credential that exists only on the server; the response comes
back scrubbed and streamed; the secret is found nowhere on the launcher's side; a project
policy cannot make the relay reach loopback or a metadata address; a server gone is a 502."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy.conftest import Outside, outside  # noqa: F401 (a fixture)

from tests.conftest import require_root, require_tools
from tests.server.conftest import Served, cli
from tests.server.test_launcher import Server, _popen, _wait

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

SECRET = "corral-relay-secret-" + os.urandom(8).hex()


@pytest.fixture
def relay_server(db_url: str, kek_file: Path, tmp_path: Path, outside: Outside,  # noqa: F811
                 ) -> Iterator[Server]:
    server = Server(db_url, kek_file, tmp_path)
    # Only the outside host's address is opened to the relay; loopback and metadata are not.
    server.config.write_text(f"kek_file: {kek_file}\nrelay:\n  allow_private: "
                             f"['{outside.ip}/32']\n")
    server.start()
    yield server
    server.stop()


def _policy(host: Outside, server_port: int) -> str:
    pem = host.ca.read_text().strip().replace("\n", "\n      ")
    return f"""name: relay-policy
credentials:
  tok: {{secret: "server:tok", header: Authorization, format: "Bearer {{secret}}", env: TOK}}
egress:
  - host: {host.ip}
    ports: [443]
    action: platform
    credential: tok
    paths: ["/reflect", "/sse", "/echo"]
    tls_ca: |
      {pem}
  - host: 127.0.0.1
    ports: [{server_port}, 443]
    action: platform
    credential: tok
  - host: 169.254.169.254
    action: platform
    credential: tok
"""


def _files_with(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


def _procs_with(needle: bytes) -> list[str]:
    """Processes whose environment or command line holds ``needle`` (this test's own process
    aside, which made the secret)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for name in ("environ", "cmdline"):
            try:
                if needle in Path(f"/proc/{pid}/{name}").read_bytes():
                    found.append(f"{pid}/{name}")
            except OSError:
                continue
    return found


def test_platform_relay_end_to_end(relay_server: Server, outside: Outside,  # noqa: F811
                                   corral_env: dict[str, str], tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    owner = Served(relay_server.url, relay_server.db_url, Path()).token()
    env = {**corral_env, "CORRAL_SERVER": relay_server.url, "CORRAL_TOKEN": owner,
           "CORRAL_HEARTBEAT_S": "0.3"}
    cli("team", "create", "web", env=env)
    cli("project", "create", "shop", "--team", "web", env=env)
    policy = tmp_path / "relay.yaml"
    policy.write_text(_policy(outside, relay_server.port))
    cli("policy", "push", str(policy), "--project", "shop", env=env)
    cli("creds", "set", "tok", "--project", "shop", env=env, stdin=SECRET)

    ws = tmp_path / "ws"
    ws.mkdir()
    os.chown(ws, 0, 0)
    ip = outside.ip
    script = (
        f"curl -sS -D /workspace/reflect_head https://{ip}/reflect?mode=split "
        "> /workspace/reflect 2>/workspace/err; "
        f"curl -sN https://{ip}/sse | while IFS= read -r line; do "
        "echo \"$(date +%s.%N) $line\"; done > /workspace/sse; "
        f"curl -s -o /dev/null -w '%{{http_code}}' https://{ip}/other > /workspace/other; "
        f"curl --noproxy '' -s -w ' %{{http_code}}' https://127.0.0.1:{relay_server.port}/healthz "
        "> /workspace/loopback; "
        "curl -s -w ' %{http_code}' https://169.254.169.254/latest/meta-data/ > /workspace/meta; "
        "touch /workspace/one; while [ ! -e /workspace/go ]; do sleep 0.1; done; "
        f"curl -s -w ' %{{http_code}}' https://{ip}/echo > /workspace/down; "
        "touch /workspace/two")
    proc = _popen(env, "--project", "shop", "--workspace", str(ws), "--", "sh", "-c", script)
    try:
        _wait(lambda: (ws / "one").exists(), "the relayed requests")
        # While the run lives: no process on this machine (launcher, proxy, sandbox) holds
        # the secret in its environment or command line.
        assert _procs_with(SECRET.encode()) == []
        relay_server.stop()
        (ws / "go").touch()
        _wait(lambda: (ws / "two").exists(), "the request with the server gone")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if relay_server.proc is None:
            relay_server.start()

    reflect = (ws / "reflect").read_text()
    seen = {p.name: p.read_text()[:500] for p in ws.iterdir()}
    assert reflect, seen
    # The agent sent no Authorization: the relay injected it, and scrubbed its reflection.
    assert "authorization: Bearer corral-placeholder-tok" in reflect.lower().replace(
        "bearer", "Bearer"), reflect
    assert SECRET not in reflect
    # One Date, the upstream's: the relay's HTTP server adds its own, which must not pass.
    head = (ws / "reflect_head").read_text().lower().splitlines()
    assert len([h for h in head if h.startswith("date:")]) == 1, head

    lines = [ln.split(" ", 1) for ln in (ws / "sse").read_text().splitlines() if "data" in ln]
    assert len(lines) == 3, lines
    # three events 0.4 s apart do not arrive together: the response streams. (Each event's
    # last bytes wait for the next chunk: the scrubber holds back up to a needle's length,
    # here longer than an event, as the local proxy's does.)
    assert float(lines[2][0]) - float(lines[0][0]) > 0.3, lines

    assert (ws / "other").read_text() == "403"  # the launcher's own decision
    loop_body, _, loop_status = (ws / "loopback").read_text().rpartition(" ")
    assert loop_status == "403" and "relay.allow_private" in loop_body, loop_body
    meta_body, _, meta_status = (ws / "meta").read_text().rpartition(" ")
    assert meta_status == "403" and "169.254" in meta_body, meta_body
    down_body, _, down_status = (ws / "down").read_text().rpartition(" ")
    assert down_status == "502" and "unreachable" in down_body, down_body

    # The secret is nowhere on the launcher's side: its state (audit db, caches, leftovers),
    # its config, the run's workspace, and what the launcher printed.
    needle = SECRET.encode()
    for root in (Path(env["CORRAL_HOME"]), Path(env["CORRAL_CONFIG"]), ws):
        assert _files_with(root, needle) == [], root
    assert SECRET not in out and SECRET not in err
    time.sleep(0.1)


GIB = 1 << 30


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _peak_rss(pid: int) -> tuple[str, int]:
    """A process's name and its peak resident set (VmHWM) in bytes."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80]
    except OSError:
        return "", 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return cmd.decode(errors="replace"), int(fields.get("VmHWM", "0 kB").split()[0]) * 1024


def test_platform_relay_upload_revoke_and_database(
        relay_server: Server, outside: Outside, corral_env: dict[str, str],  # noqa: F811
        tmp_path: Path) -> None:
    """A 1 GiB upload streams through the proxy and the relay (neither process's peak RSS
    comes near it); the database's address is refused like the server's own port; a policy
    pushed mid-run makes the relay refuse the run's next request with policy_revoked."""
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    import hashlib

    owner = Served(relay_server.url, relay_server.db_url, Path()).token()
    env = {**corral_env, "CORRAL_SERVER": relay_server.url, "CORRAL_TOKEN": owner,
           "CORRAL_HEARTBEAT_S": "0.3"}
    cli("team", "create", "web", env=env)
    cli("project", "create", "shop", "--team", "web", env=env)
    policy = tmp_path / "relay.yaml"
    # PostgreSQL here listens on a unix socket only; 5432 is where a TCP database would be.
    text = _policy(outside, relay_server.port).replace(
        "paths: [\"/reflect\", \"/sse\", \"/echo\"]", "paths: [\"/sink\", \"/echo\"]").replace(
        f"ports: [{relay_server.port}, 443]", f"ports: [{relay_server.port}, 5432]")
    policy.write_text(text)
    cli("policy", "push", str(policy), "--project", "shop", env=env)
    cli("creds", "set", "tok", "--project", "shop", env=env, stdin=SECRET)

    ws = tmp_path / "ws"
    ws.mkdir()
    os.chown(ws, 0, 0)
    ip = outside.ip
    script = (
        f"curl --noproxy '' -s -w ' %{{http_code}}' https://127.0.0.1:5432/ > /workspace/db; "
        f"head -c {GIB} /dev/zero | curl -sS -X POST -T - https://{ip}/sink "
        "> /workspace/sink 2>/workspace/sink.err; "
        "touch /workspace/one; while [ ! -e /workspace/go ]; do sleep 0.1; done; "
        f"curl -s -w ' %{{http_code}}' https://{ip}/echo > /workspace/revoked; "
        "touch /workspace/two; while [ ! -e /workspace/end ]; do sleep 0.1; done")
    proc = _popen(env, "--project", "shop", "--workspace", str(ws), "--", "sh", "-c", script)
    try:
        started = time.monotonic()
        _wait(lambda: (ws / "one").exists(), "the upload", timeout=180)
        print(f"upload and start: {time.monotonic() - started:.1f} s")
        peaks = [_peak_rss(p) for p in _descendants(proc.pid)]
        server_peak = _peak_rss(relay_server.proc.pid if relay_server.proc else 0)
        policy.write_text(text.replace("name: relay-policy", "name: relay-policy-2"))
        cli("policy", "push", str(policy), "--project", "shop", env=env)
        (ws / "go").touch()
        _wait(lambda: (ws / "two").exists(), "the request after the push")
        (ws / "end").touch()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()

    seen = {p.name: p.read_text()[:500] for p in ws.iterdir()}
    db_body, _, db_status = (ws / "db").read_text().rpartition(" ")
    assert db_status == "403" and "relay.allow_private" in db_body, seen

    zeros = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(GIB >> 20):
        zeros.update(block)
    assert (ws / "sink").read_text(), seen
    import json

    assert json.loads((ws / "sink").read_text()) == {"length": GIB,
                                                      "sha256": zeros.hexdigest()}, seen
    # A body held whole would show as a peak of more than 1 GiB; a streamed one stays small.
    for name, peak in [*peaks, server_peak]:
        assert peak < 256 << 20, (name, peak >> 20)
    assert any("proxy" in name for name, _ in peaks), peaks
    print("peak RSS MiB:", sorted(((peak >> 20, name[-50:]) for name, peak in
                                   [*peaks, server_peak]), reverse=True)[:4])

    rev_body, _, rev_status = (ws / "revoked").read_text().rpartition(" ")
    assert rev_status == "403" and "policy_revoked" in rev_body, rev_body
