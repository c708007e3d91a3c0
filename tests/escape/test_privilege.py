"""Privilege layer: the agent is its own uid with no groups, no capabilities, no_new_privs,
and cannot get back to root (setuid binaries, user namespaces, ptrace or signals to host
processes). Positive controls run the same probe on the host as the same uid, where it works.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.policy.types import FilesConfig
from escape.conftest import host_probe, probe_in, run_in

pytestmark = pytest.mark.root


def _status(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_identity_caps_and_no_new_privs(sandbox) -> None:
    sb = sandbox()
    st = _status(run_in(sb, ["cat", "/proc/self/status"]).out)
    assert st["Uid"].split() == [str(sb.uid)] * 4
    assert st["Gid"].split() == [str(sb.gid)] * 4
    assert st["Groups"] == ""
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, cap
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"
    assert run_in(sb, ["id", "-un"]).out.strip() == "corral"  # the uid has a name inside
    host = _status(Path("/proc/self/status").read_text())
    assert int(host["CapEff"], 16) != 0  # control: the launcher itself is privileged


@pytest.fixture
def setuid_id() -> Iterator[Path]:
    """A setuid-root copy of ``id`` in a directory the sandbox may read."""
    d = Path(f"/opt/corral-test-{secrets.token_hex(3)}")
    d.mkdir(mode=0o755)
    exe = d / "suid-id"
    shutil.copy("/usr/bin/id", exe)
    os.chown(exe, 0, 0)
    exe.chmod(0o4755)
    try:
        yield exe
    finally:
        shutil.rmtree(d)


def test_setuid_binary_does_not_elevate(sandbox, setuid_id: Path) -> None:
    sb = sandbox(files=FilesConfig(read=(setuid_id.parent,)))
    assert run_in(sb, [str(setuid_id), "-u"]).out.strip() == str(sb.uid)
    control = subprocess.run(["setpriv", f"--reuid={sb.uid}", f"--regid={sb.gid}",
                              "--clear-groups", str(setuid_id), "-u"],
                             capture_output=True, text=True, check=True)
    assert control.stdout.strip() == "0"  # same uid on the host: the bit works there


@pytest.mark.parametrize(
    "argv",
    [
        ["su", "-c", "id -u", "root"],
        ["mount", "-t", "tmpfs", "none", "/workspace"],
        ["unshare", "-U", "-r", "id", "-u"],
        ["unshare", "-m", "true"],
        ["/usr/bin/python3", "-c", "import os; os.setuid(0)"],
    ],
    ids=["su", "mount", "unshare-user", "unshare-mount", "setuid0"],
)
def test_no_way_back_to_root(sandbox, argv: list[str]) -> None:
    sb = sandbox()
    done = run_in(sb, argv, input=b"")
    assert done.returncode != 0, done
    assert done.out.strip() != "0"


def test_root_controls_for_the_above(sandbox) -> None:
    """The same commands do work where privilege exists (so the probes are real)."""
    sb = sandbox()
    uid = sb.uid
    assert subprocess.run(["su", "-c", "id -u", "root"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL).stdout.strip() == "0"
    user_ns = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                              "unshare", "-U", "-r", "id", "-u"], capture_output=True, text=True)
    assert user_ns.stdout.strip() == "0"  # unprivileged user namespaces exist on this host


@pytest.fixture
def host_process(sandbox) -> Iterator[tuple[object, subprocess.Popen[bytes]]]:
    """A sandbox and a host process running as the sandbox's own uid (the worst case)."""
    sb = sandbox()
    proc = subprocess.Popen(["setpriv", f"--reuid={sb.uid}", f"--regid={sb.gid}",
                             "--clear-groups", "sleep", "60"])
    try:
        yield sb, proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("kind", ["kill", "ptrace"])
def test_host_process_untouchable(host_process, kind: str) -> None:
    sb, proc = host_process
    assert probe_in(sb, kind, proc.pid).startswith("err")
    assert proc.poll() is None
    assert host_probe(kind, proc.pid, uid=sb.uid).startswith("ok")  # control: same uid, host


def test_launcher_untouchable(sandbox) -> None:
    sb = sandbox()
    assert probe_in(sb, "kill", os.getpid(), 15).startswith("err")
    assert probe_in(sb, "kill", 1, 9).startswith("err")  # the sandbox's init is root's
