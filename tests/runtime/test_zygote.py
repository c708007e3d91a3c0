"""The proxy zygote (corral/runtime/zygote.py): real runs through a warm helper, and its exits.

Every test works on a copy of the corral package (its own zygote key, socket and code stamp),
so edits elsewhere in the tree and other suites' zygotes do not disturb it, and the stale test
can edit code. Runs are real ``corral run -p`` sandboxes whose proxy serves an outside host in
a test netns (``outside``). Zygotes started here are stopped in the fixture's finalizer.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require, require_root, require_tools
from proxy.conftest import Outside

import corral
from corral.runtime import zygote

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@dataclass
class Copy:
    root: Path  # contains corral/
    tmp: Path
    corral_env: dict[str, str]

    @property
    def pkg(self) -> str:
        return str(self.root / "corral")

    @property
    def path(self) -> str:
        return zygote.socket_path(self.pkg)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.corral_env, "PYTHONPATH": str(self.root), **extra}

    def start(self, *args: str) -> int:
        """Start this copy's zygote directly (it takes its lock itself); its pid once it
        listens."""
        env = {k: os.environ[k] for k in zygote.KEY_ENV if os.environ.get(k)}
        env.update(PATH=os.environ["PATH"], PYTHONPATH=str(self.root), PYTHONSAFEPATH="1")
        # setsid -f: not our child, so its exit leaves no zombie of ours to tell from "gone"
        tag = ["--tag", os.environ["CORRAL_ZYGOTE_TAG"]] if "CORRAL_ZYGOTE_TAG" in os.environ \
            else []
        subprocess.run(["setsid", "-f", sys.executable, "-m", "corral.runtime.zygote",
                        "--package", self.pkg, *tag, *args], env=env, cwd="/",
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        return self.wait_listening()

    def wait_listening(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.zygotes()
            if pids and os.path.exists(self.path):
                return pids[0]
            time.sleep(0.05)
        raise AssertionError("the zygote did not start listening")

    def zygotes(self) -> list[int]:
        return [p for p in zygote.running() if self.pkg.encode() in _cmdline(p)]

    def run(self, policy: Path, script: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "corral", "run", "-p", str(policy), "--",
                                 "sh", "-c", script], env=self.env(), cwd=str(self.tmp),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                **kw)  # type: ignore[call-overload]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(ln.split(":\t", 1) for ln in text.splitlines() if ":\t" in ln)


def _cgroups(pid: int) -> set[str]:
    return {ln.split(":", 2)[2] for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines()}


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _no_children(pid: int, timeout: float = 5) -> bool:
    """All of ``pid``'s children exited and were reaped (zombies are listed too)."""
    deadline = time.monotonic() + timeout
    while _children(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _children(pid) == []


def _gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def copy(tmp_path: Path, corral_env: dict[str, str]) -> Iterator[Copy]:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    root = tmp_path / "src"
    shutil.copytree(Path(corral.__file__).parent, root / "corral")  # mtimes kept: pycs valid
    c = Copy(root, tmp_path, corral_env)
    try:
        yield c
    finally:
        for pid in c.zygotes():
            zygote.stop(pid)
        subprocess.run([sys.executable, "-m", "corral", "sandbox", "gc"], env=c.env(),
                       cwd=str(tmp_path), capture_output=True, timeout=60, check=False)
        lock = c.path[:-5] + ".lock"
        with contextlib.suppress(OSError):
            os.unlink(lock)


def _policy(tmp: Path, outside: Outside) -> Path:
    policy = tmp / "p.yaml"
    policy.write_text(f"""name: zy
egress:
  - host: {outside.ip}
    ports: [443]
    action: inspect
    tls_ca: {outside.ca}
    allow_private: true
  - host: {outside.ip}
    ports: [80]
    action: direct
    allow_private: true
""")
    return policy


def _fetch(outside: Outside) -> str:
    return (f"curl -s -o /dev/null -w 'tls=%{{http_code}}\\n' https://{outside.ip}/echo; "
            f"curl -s -o /dev/null -w 'plain=%{{http_code}}\\n' http://{outside.ip}/echo")


def _proxy_of(run: subprocess.Popen[str], corral_home: str) -> tuple[int, int]:
    """(pid, helper uid) of the running sandbox's proxy, once it serves."""
    (entry,) = (Path(corral_home) / "sandboxes").glob("*.json")
    (helper,) = json.loads(entry.read_text())["helper_uids"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for name in os.listdir("/proc"):
            if name.isdigit() and _status(int(name)).get("Uid", "").split()[:1] == [str(helper)]:
                return int(name), helper
        time.sleep(0.02)
    raise AssertionError("no process runs as the proxy's helper uid")


@pytest.mark.parametrize("bytecode", [True, False], ids=["with-bytecode", "fresh-checkout"])
def test_warm_zygote_forks_the_proxy_that_serves(copy: Copy, outside: Outside,
                                                 bytecode: bool) -> None:
    """Also from a fresh checkout: the zygote's own first imports then write ``__pycache__``
    directories, which is no edit of the code (no stale answer, no local fork)."""
    if not bytecode:
        for cache in Path(copy.pkg).rglob("__pycache__"):
            shutil.rmtree(cache)
    zpid = copy.start()
    run = copy.run(_policy(copy.tmp, outside), _fetch(outside) + "; echo up; sleep 3")
    try:
        assert run.stdout is not None
        lines = [run.stdout.readline().strip() for _ in range(3)]
        assert lines == ["tls=200", "plain=200", "up"], (lines, run.stderr)
        pid, helper = _proxy_of(run, copy.corral_env["CORRAL_HOME"])
        status = _status(pid)
        assert int(status["PPid"]) == zpid != run.pid  # the zygote's child, not the launcher's
        assert status["Uid"].split() == [str(helper)] * 4
        assert status["NoNewPrivs"].strip() == "1"
        assert status["Groups"].strip() == ""
    finally:
        run.wait(timeout=30)
    assert run.returncode == 0, run.stderr.read() if run.stderr else ""
    assert _gone(pid)
    assert _no_children(zpid)  # reaped: no zombie left
    assert copy.zygotes() == [zpid]  # still serving the next run


def test_without_a_zygote_the_run_forks_locally_and_starts_one(copy: Copy,
                                                               outside: Outside) -> None:
    assert copy.zygotes() == []
    done = copy.run(_policy(copy.tmp, outside), _fetch(outside))
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert out.split() == ["tls=200", "plain=200"]
    zpid = copy.wait_listening()  # started in the background for the next runs
    assert os.stat(copy.path).st_mode & 0o777 == 0o600
    assert os.stat(zygote.DIR).st_mode & 0o777 == 0o700
    assert _status(zpid)["Uid"].split()[0] == "0"
    fds = os.listdir(f"/proc/{zpid}/fd")  # nothing inherited from the launcher or pytest
    targets = sorted(os.readlink(f"/proc/{zpid}/fd/{fd}") for fd in fds)
    assert not [t for t in targets if t.startswith("pipe:")], targets
    assert os.readlink(f"/proc/{zpid}/fd/1") == "/dev/null"


def test_30_concurrent_fallbacks_start_one_zygote(copy: Copy) -> None:
    """The spawn lock: many launchers finding no zygote at once start exactly one."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from corral.runtime import zygote; "
            "print(int(zygote.spawn()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(copy.root)], env=copy.env(),
                              cwd=str(copy.tmp), stdout=subprocess.PIPE, text=True)
             for _ in range(30)]
    started = sum(int(p.communicate(timeout=60)[0] or 0) for p in procs)
    assert started == 1
    copy.wait_listening()
    assert len(copy.zygotes()) == 1


def test_edited_code_makes_the_zygote_stale(copy: Copy, outside: Outside) -> None:
    zpid = copy.start()
    time.sleep(0.05)  # ctime granularity: the edit below is strictly later than the stamp
    target = Path(copy.pkg) / "proxy" / "server.py"
    target.write_text(target.read_text() + "\n# edited\n")
    done = copy.run(_policy(copy.tmp, outside), _fetch(outside))
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err  # served by a local fork
    assert out.split() == ["tls=200", "plain=200"]
    assert _gone(zpid)  # answered "stale" and left
    new = copy.wait_listening()  # and the launcher started a fresh one
    assert new != zpid


def _setfsuid(uid: int) -> None:
    ctypes.CDLL(None, use_errno=True).setfsuid(uid)


def _raw_request(path: str, as_uid: int | None) -> bytes:
    """Connect (as ``as_uid``: euid dropped, fsuid kept 0 so the 0700 dir is still
    reachable), send a well-formed request with two sockets; the reply's bytes (b"" if
    closed). In a forked child, so our own credentials are untouched."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            if as_uid is not None:
                os.setresuid(as_uid, as_uid, 0)
                _setfsuid(0)
            _a, b = socket.socketpair()
            _c, d = socket.socketpair()
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            conn.settimeout(5)
            conn.connect(path)
            try:
                socket.send_fds(conn, [zygote._handshake()], [b.fileno(), d.fileno()])
                msg, _fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
            except (BrokenPipeError, ConnectionResetError):
                msg = b""  # closed before or after our request: refused either way
            os.write(w, msg or b"closed")
        except BaseException as err:
            os.write(w, f"error: {err!r}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def test_a_non_root_peer_is_refused(copy: Copy) -> None:
    zpid = copy.start()
    assert _raw_request(copy.path, as_uid=65534) == b"closed"
    assert _children(zpid) == []  # nothing forked for it
    reply = json.loads(_raw_request(copy.path, as_uid=None))  # the positive control: root
    assert reply["pid"] > 0
    assert _gone(reply["pid"])  # our socket ends closed: the child saw EOF and left


def test_idle_zygote_exits(copy: Copy) -> None:
    zpid = copy.start("--idle", "1")
    assert _gone(zpid, timeout=5)
    assert not os.path.exists(copy.path)


def test_zygote_exits_when_its_socket_is_removed_or_replaced(copy: Copy) -> None:
    zpid = copy.start()
    os.unlink(copy.path)
    assert _gone(zpid, timeout=5)
    zpid = copy.start()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    other.bind(copy.path + ".other")
    os.rename(copy.path + ".other", copy.path)  # replaced: not ours any more
    try:
        assert _gone(zpid, timeout=5)
        assert os.path.exists(copy.path)  # it removes only its own socket
    finally:
        other.close()
        os.unlink(copy.path)


def test_killed_launcher_ends_the_zygotes_proxy_child(copy: Copy, outside: Outside) -> None:
    zpid = copy.start()
    run = copy.run(_policy(copy.tmp, outside), "echo up; sleep 30")
    try:
        assert run.stdout is not None and run.stdout.readline() == "up\n"
        pid, _helper = _proxy_of(run, copy.corral_env["CORRAL_HOME"])
        assert int(_status(pid)["PPid"]) == zpid
    finally:
        run.send_signal(signal.SIGKILL)  # no teardown at all
        run.wait()
    assert _gone(pid)  # its control and lifeline sockets reached EOF
    assert _no_children(zpid)


@pytest.fixture
def own_cgroup() -> Iterator[tuple[Path, str]]:
    """A fresh cgroup (v1: in the pids hierarchy; v2: under the root): its directory and the
    path /proc/PID/cgroup shows for a member. Removed in the finalizer."""
    from corral.sandbox.cgroups import detect_layout

    layout = detect_layout()
    mount = layout.v2 if layout.version == 2 else layout.v1.get("pids")
    require(mount is not None, "a pids cgroup hierarchy")
    assert mount is not None
    name = f"corral-zytest-{os.urandom(3).hex()}"
    group = mount / name
    group.mkdir()
    try:
        yield group, f"/{name}"
    finally:
        # still occupied after the wait (a failed run fell back and spawned a zygote in
        # here): end what is left, so the group can go
        for stray in _members_after(group, 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stray), signal.SIGKILL)
        _members_after(group, 10)
        group.rmdir()


def _members_after(group: Path, timeout: float) -> list[str]:
    """The group's processes once it emptied or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while (members := (group / "cgroup.procs").read_text().split()) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    return members


def test_proxy_child_gets_the_launchers_cgroup_rlimits_umask(copy: Copy, outside: Outside,
                                                 own_cgroup: tuple[Path, str]) -> None:
    """What a launcher-forked child inherited, the zygote's child is given: the launcher's
    cgroup (until ``start`` moves it into the sandbox's), rlimits and umask."""
    group, shown = own_cgroup
    zpid = copy.start()
    procs = os.fsencode(group / "cgroup.procs")

    def join() -> None:  # in the launcher, before exec: its cgroup, an rlimit, a umask
        fd = os.open(procs, os.O_WRONLY)
        os.write(fd, b"0")
        os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (777, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
        os.umask(0o027)

    run = copy.run(_policy(copy.tmp, outside), "echo up; sleep 3", preexec_fn=join)
    try:
        assert run.stdout is not None and run.stdout.readline() == "up\n"
        pid, _helper = _proxy_of(run, copy.corral_env["CORRAL_HOME"])
        assert int(_status(pid)["PPid"]) == zpid
        assert shown not in _cgroups(zpid)  # the zygote is elsewhere; its child followed us,
        # then, before serving, moved on into its sandbox's group (its limits cover it)
        import json

        (entry,) = Path(copy.corral_env["CORRAL_HOME"], "sandboxes").glob("*.json")
        assert f"/corral/{json.loads(entry.read_text())['cgroup']}" in _cgroups(pid)
        limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
        assert [ln.split()[3] for ln in limits if ln.startswith("Max open files")] == ["777"]
        assert _status(pid)["Umask"].strip() == "0027"
    finally:
        run.wait(timeout=30)
    assert run.returncode == 0
