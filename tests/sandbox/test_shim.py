"""The privilege-drop shim, run directly as root (no bubblewrap) against the real kernel.

Each protection is checked next to a positive control that differs only in that protection:
two world-writable (1777) directories, one listed in ``writable``; an abstract socket and a
process outside, reached with scoping off and refused with it on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require, require_root, require_tools

from corral.sandbox import _privdrop, landlock, seccomp, shim
from corral.sandbox.shim import ShimConfig, shim_argv

pytestmark = pytest.mark.root

UID = GID = 64123


def _require() -> None:
    require_root()
    require(landlock.landlock_abi() >= landlock.MIN_ABI_FOR_SCOPES, "Landlock ABI >= 6")
    require(os.path.exists(shim.PYTHON), shim.PYTHON)


def _run(cfg: ShimConfig, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*shim_argv(cfg), *cmd], capture_output=True, text=True, timeout=30, **kw  # type: ignore[call-overload]
    )


def _py(cfg: ShimConfig, code: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return _run(cfg, shim.PYTHON, "-I", "-S", "-c", code, **kw)


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A scratch dir the sandbox uid can traverse (pytest's own tmp root is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="corral-shim-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    for d in (inside, outside):
        d.mkdir()
        d.chmod(0o1777)  # DAC lets the sandbox uid write both: only Landlock tells them apart
    return inside, outside


STATUS = (
    "import os, json;"
    "s = {k: v.strip() for k, v in (l.split(':', 1) for l in open('/proc/self/status'))};"
    "print(json.dumps({'status': s, 'groups': os.getgroups(), 'res': [os.getresuid(), "
    "os.getresgid()]}))"
)


def test_identity_caps_nnp() -> None:
    _require()
    bare = json.loads(subprocess.run([shim.PYTHON, "-I", "-S", "-c", STATUS], capture_output=True,
                                     text=True, check=True).stdout)
    assert bare["status"]["CapEff"] != "0000000000000000"  # positive control: root has caps

    # the launcher's supplementary groups must not survive into the sandbox
    out = _py(ShimConfig(uid=UID, gid=GID), STATUS, extra_groups=[4, 27])
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    st = got["status"]
    assert got["res"] == [[UID] * 3, [GID] * 3]
    assert got["groups"] == []
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert st[key] == "0000000000000000", key
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "0"  # the shim alone installs no filter (bwrap does; see below)


def test_cannot_regain_root() -> None:
    """setuid(0) fails and a setuid-root binary gives nothing back (no_new_privs, no caps)."""
    _require()
    code = (
        "import os, subprocess\n"
        "try:\n    os.setuid(0); print('setuid-ok')\n"
        "except PermissionError: print('setuid-denied')\n"
        "r = subprocess.run(['/usr/bin/id', '-u'], capture_output=True, text=True)\n"
        "print(r.stdout.strip())"
    )
    out = _py(ShimConfig(uid=UID, gid=GID), code)
    assert out.stdout.split() == ["setuid-denied", str(UID)], out.stderr


def test_seccomp_via_bwrap() -> None:
    """Under bwrap --seccomp the shim still works and CMD runs filtered."""
    _require()
    require_tools("bwrap")
    r, w = os.pipe()
    os.write(w, seccomp.build_filter())
    os.close(w)
    try:
        out = subprocess.run(
            [shutil.which("bwrap") or "bwrap", "--dev-bind", "/", "/", "--seccomp", str(r), "--",
             *shim_argv(ShimConfig(uid=UID, gid=GID)), shim.PYTHON, "-I", "-S", "-c", STATUS],
            pass_fds=(r,), capture_output=True, text=True, timeout=30,
        )
    finally:
        os.close(r)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)["status"]
    assert st["Seccomp"] == "2"
    assert st["CapEff"] == "0000000000000000"


WRITE = (
    "import os, sys\n"
    "for d in sys.argv[1:]:\n"
    "    try:\n"
    "        open(os.path.join(d, 'f'), 'w').write('x'); print('ok')\n"
    "    except PermissionError: print('denied')\n"
)


def test_writes_only_beneath_writable(dirs: tuple[Path, Path]) -> None:
    _require()
    inside, outside = dirs
    cfg = ShimConfig(uid=UID, gid=GID, writable=(str(inside),))
    out = _run(cfg, shim.PYTHON, "-I", "-S", "-c", WRITE, str(inside), str(outside))
    assert out.stdout.split() == ["ok", "denied"], out.stderr
    assert not (outside / "f").exists()
    # positive control: the same probe with the outside dir also granted writes there
    both = ShimConfig(uid=UID, gid=GID, writable=(str(inside), str(outside)))
    out = _run(both, shim.PYTHON, "-I", "-S", "-c", WRITE, str(outside))
    assert out.stdout.split() == ["ok"], out.stderr


def test_write_escapes_refused(dirs: tuple[Path, Path]) -> None:
    """Renames, hard links and symlinks out of the writable tree do not widen it."""
    _require()
    inside, outside = dirs
    (inside / "link").symlink_to(outside)
    code = (
        "import os, sys\n"
        "ins, outs = sys.argv[1:]\n"
        "def t(f):\n"
        "    try: f(); print('ok')\n"
        "    except OSError as e: print('denied', e.errno)\n"
        "open(ins + '/a', 'w').close()\n"
        "t(lambda: open(ins + '/link/f', 'w'))\n"
        "t(lambda: os.rename(ins + '/a', outs + '/a'))\n"
        "t(lambda: os.link(ins + '/a', outs + '/h'))\n"
        "t(lambda: os.mkdir(outs + '/d'))\n"
    )
    out = _run(ShimConfig(uid=UID, gid=GID, writable=(str(inside),)), shim.PYTHON, "-I", "-S",
               "-c", code, str(inside), str(outside))
    assert [line.split()[0] for line in out.stdout.splitlines()] == ["denied"] * 4, out.stderr
    assert os.listdir(outside) == []


def test_devices_and_shm_writable() -> None:
    _require()
    script = "echo x > /dev/null && echo ok; echo y > /dev/shm/corral-test-$$ && echo shm; " \
             "rm -f /dev/shm/corral-test-$$"
    out = _run(ShimConfig(uid=UID, gid=GID), "/bin/sh", "-c", script)
    assert out.stdout.split() == ["ok", "shm"], out.stderr
    # control: without the grants Landlock refuses both
    bare = _run(ShimConfig(uid=UID, gid=GID, devices=(), scratch=()), "/bin/sh", "-c", script)
    assert bare.stdout.split() == [], bare.stdout


def test_readable_exec_limits_reads(dirs: tuple[Path, Path]) -> None:
    _require()
    inside, outside = dirs
    for d in dirs:
        (d / "secret").write_text("data\n")
        (d / "secret").chmod(0o644)
    system = ("/usr", "/lib", "/lib64", "/bin", "/etc")
    cfg = ShimConfig(uid=UID, gid=GID, readable_exec=(*system, str(inside)))
    ok = _run(cfg, "/bin/cat", str(inside / "secret"))
    assert ok.stdout == "data\n", ok.stderr
    denied = _run(cfg, "/bin/cat", str(outside / "secret"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    control = _run(ShimConfig(uid=UID, gid=GID), "/bin/cat", str(outside / "secret"))
    assert control.stdout == "data\n"


@pytest.fixture
def abstract_listener() -> Iterator[str]:
    name = f"\0corral-test-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(name)
    srv.listen(8)
    try:
        yield name[1:]
    finally:
        srv.close()


CONNECT = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "try:\n    s.connect('\\0' + sys.argv[1]); print('connected')\n"
    "except OSError as e: print('refused', e.errno)\n"
)


def test_abstract_unix_scoped(abstract_listener: str) -> None:
    _require()
    scoped = _run(ShimConfig(uid=UID, gid=GID), shim.PYTHON, "-I", "-S", "-c", CONNECT,
                  abstract_listener)
    assert scoped.stdout.split()[0] == "refused", scoped.stdout + scoped.stderr
    # positive control: scoping off, the same connect reaches the outside listener
    open_ = _run(ShimConfig(uid=UID, gid=GID, scope_abstract_unix=False), shim.PYTHON, "-I", "-S",
                 "-c", CONNECT, abstract_listener)
    assert open_.stdout.split() == ["connected"], open_.stderr


@pytest.fixture
def outside_process() -> Iterator[int]:
    # Same uid as the sandbox, so plain DAC would allow the signal: only the scope refuses it.
    proc = subprocess.Popen(["/bin/sleep", "60"], user=UID, group=GID, extra_groups=[])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


KILL = (
    "import os, sys\n"
    "try:\n    os.kill(int(sys.argv[1]), 0); print('signalled')\n"
    "except OSError as e: print('refused', e.errno)\n"
)


def test_signals_scoped(outside_process: int) -> None:
    _require()
    scoped = _run(ShimConfig(uid=UID, gid=GID), shim.PYTHON, "-I", "-S", "-c", KILL,
                  str(outside_process))
    assert scoped.stdout.split() == ["refused", "1"], scoped.stdout + scoped.stderr
    control = _run(ShimConfig(uid=UID, gid=GID, scope_signals=False), shim.PYTHON, "-I", "-S",
                   "-c", KILL, str(outside_process))
    assert control.stdout.split() == ["signalled"], control.stderr


def test_exit_codes(tmp_path: Path) -> None:
    _require()
    noexec = tmp_path / "script.sh"
    noexec.write_text("#!/bin/sh\necho hi\n")
    noexec.chmod(0o644)
    cfg = ShimConfig(uid=UID, gid=GID)
    nf = _run(cfg, "corral-no-such-command")
    assert nf.returncode == 127
    assert nf.stderr == "corral: corral-no-such-command: command not found\n"
    ne = _run(cfg, str(noexec))
    assert ne.returncode == 126
    assert ne.stderr == f"corral: {noexec}: cannot execute: Permission denied\n"
    ok = _run(cfg, "sh", "-c", "exit 7")
    assert ok.returncode == 7


def test_sigpipe_default_in_cmd() -> None:
    """Python ignores SIGPIPE for itself; CMD must not inherit that."""
    _require()
    out = _run(ShimConfig(uid=UID, gid=GID), "/bin/sh", "-c", "grep SigIgn /proc/self/status")
    ignored = int(out.stdout.split()[1], 16)
    assert not ignored & (1 << (13 - 1)), out.stdout  # SIGPIPE


@pytest.mark.parametrize(
    "config",
    ['{"uid": 0, "gid": 5}', '{"uid": 5}', "not json", '{"uid": 5, "gid": 5, "bogus": 1}',
     '{"uid": 5, "gid": 5, "writable": ["relative"]}', '{"uid": true, "gid": 5}',
     '{"uid": 5, "gid": 5, "writable": ["/nonexistent/corral"]}'],
)
def test_bad_config_refused(config: str) -> None:
    _require()
    argv = [*shim_argv(ShimConfig(uid=UID, gid=GID))[:-1], config, "/usr/bin/id"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 125
    assert out.stderr.startswith("corral: sandbox setup failed: ")
    assert out.stdout == ""


def test_shim_config_validation() -> None:
    with pytest.raises(ValueError):
        ShimConfig(uid=0, gid=1)
    with pytest.raises(ValueError):
        ShimConfig(uid=1, gid=1, writable=("relative",))
    cfg = ShimConfig(uid=7, gid=8, writable=("/w",))
    argv = shim_argv(cfg)
    assert argv[:4] == [shim.PYTHON, "-I", "-S", "-c"]
    assert json.loads(argv[-1])["writable"] == ["/w"]


def test_constants_agree() -> None:
    assert _privdrop.SYS_LANDLOCK_CREATE_RULESET == landlock.SYS_LANDLOCK_CREATE_RULESET
    assert _privdrop.SCOPE_SIGNAL == landlock.SCOPE_SIGNAL
    assert _privdrop.SCOPE_ABSTRACT_UNIX_SOCKET == landlock.SCOPE_ABSTRACT_UNIX_SOCKET


def test_landlock_preflight() -> None:
    require(landlock.landlock_abi() > 0, "Landlock")
    abi = landlock.landlock_abi()
    assert landlock.landlock_abi.__wrapped__() == abi  # type: ignore[attr-defined]
    assert (landlock.missing_features() == []) == (abi >= landlock.MIN_ABI_FOR_SCOPES)
    assert landlock.missing_features(scopes=False) == []


def test_shim_cost() -> None:
    """The shim adds at most ~10 ms (median) to an exec on this kind of machine."""
    _require()

    def median(argv: list[str], n: int = 15) -> float:
        xs = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run(argv, check=True)
            xs.append(time.perf_counter() - t)
        return sorted(xs)[n // 2]

    bare = median(["/bin/true"])
    shimmed = median([*shim_argv(ShimConfig(uid=UID, gid=GID)), "/bin/true"])
    print(f"bare {bare * 1e3:.1f} ms, shim {shimmed * 1e3:.1f} ms", file=sys.stderr)
    assert shimmed - bare < 0.100  # catches gross regressions only; bench/ has the figure


def test_source_fallback_when_bytecode_format_differs() -> None:
    """Another interpreter version in the sandbox compiles the shipped source instead."""
    _require()
    argv = shim_argv(ShimConfig(uid=UID, gid=GID))
    tag_at = argv.index(sys.implementation.cache_tag)
    argv[tag_at] = "cpython-0"
    argv[tag_at + 1] = "00"  # bytecode that would not even load
    out = subprocess.run([*argv, "/usr/bin/id", "-u"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == str(UID), out.stderr
