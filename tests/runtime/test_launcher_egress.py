"""The shared egress launcher: the proxy runs as its own uid from the sandbox range.

A real ``corral run`` with an egress policy; while it runs, the registry entry names the
proxy's helper uid and the proxy process runs as that uid (not root, not ``nobody``, not the
agent's uid); after the run the entry (and with it the uid) is gone, as is the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_root, require_tools

from corral.runtime import zygote
from corral.sandbox.registry import UID_BASE, UID_RANGE

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def _uids_of_processes() -> dict[int, int]:
    out: dict[int, int] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                out[int(pid)] = os.stat(f"/proc/{pid}").st_uid
    return out


def _held_run(corral_env: dict[str, str], tmp_path: Path, seconds: int,
              stderr: int) -> subprocess.Popen[str]:
    """A ``corral run`` with egress (so a proxy child) whose command prints "up" and waits."""
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    env = {**os.environ, **corral_env}
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\negress:\n  - host: example.test\n    action: deny\n")
    return subprocess.Popen([sys.executable, "-m", "corral", "run", "-p", str(policy), "--",
                             "sh", "-c", f"echo up; sleep {seconds}"], env=env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def test_proxy_runs_as_its_own_helper_uid(corral_env: dict[str, str], tmp_path: Path) -> None:
    proc = _held_run(corral_env, tmp_path, 8, subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        reg = Path(corral_env["CORRAL_HOME"]) / "sandboxes"
        (entry_file,) = list(reg.glob("*.json"))
        entry = json.loads(entry_file.read_text())
        (helper,) = entry["helper_uids"]
        assert UID_BASE <= helper < UID_BASE + UID_RANGE
        assert helper not in (entry["uid"], 65534)
        # the command may start before the proxy finished its setup: wait for it to serve
        deadline = time.monotonic() + 5
        while True:
            owners = _uids_of_processes()
            proxies = [pid for pid, uid in owners.items() if uid == helper]
            if proxies or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert proxies, "no process runs as the proxy's helper uid"
        for pid in proxies:  # the proxy dropped gid and groups too
            status = Path(f"/proc/{pid}/status").read_text()
            assert f"Gid:\t{helper}\t{helper}\t{helper}" in status
            groups = [ln for ln in status.splitlines() if ln.startswith("Groups:")]
            assert groups and groups[0].split(":", 1)[1].strip() == ""
            # the launcher's proxy child, or the zygote's (corral.runtime.zygote)
            assert _parent(pid) in (proc.pid, *zygote.running())
        assert not [pid for pid, uid in owners.items() if uid == 65534 and _parent(pid) == proc.pid]
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert list(reg.glob("*.json")) == []
    deadline = time.monotonic() + 5
    while helper in _uids_of_processes().values() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert helper not in _uids_of_processes().values()


def _parent(pid: int) -> int:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return -1
    return int(data.rsplit(b")", 1)[1].split()[1])


def test_a_proxy_that_fails_to_start_stops_the_run(corral_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    """The command may start while the proxy finishes its setup (its listeners already exist
    in the netns); if the proxy then fails, the sandbox is stopped and the run exits 125."""
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    bad_ca = tmp_path / "not-a-ca.pem"
    bad_ca.write_text("garbage\n")  # the proxy child fails loading it (after the fork)
    policy = tmp_path / "p.yaml"
    policy.write_text(f"name: p\negress:\n  - host: a.test\n    action: inspect\n"
                      f"    tls_ca: {bad_ca}\n")
    done = subprocess.run([sys.executable, "-m", "corral", "run", "-p", str(policy), "--",
                           "sh", "-c", "sleep 10; echo survived"],
                          env={**os.environ, **corral_env}, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 125
    assert "survived" not in done.stdout
    assert "egress proxy failed to start" in done.stderr
    assert list((Path(corral_env["CORRAL_HOME"]) / "sandboxes").glob("*.json")) == []


def test_killed_launcher_proxy_exits_and_gc_frees_its_uid(corral_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    proc = _held_run(corral_env, tmp_path, 30, subprocess.DEVNULL)
    reg = Path(corral_env["CORRAL_HOME"]) / "sandboxes"
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        (entry_file,) = list(reg.glob("*.json"))
        (helper,) = json.loads(entry_file.read_text())["helper_uids"]
        deadline = time.monotonic() + 5
        while helper not in _uids_of_processes().values() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert helper in _uids_of_processes().values()
    finally:
        proc.kill()  # SIGKILL: no teardown
        proc.wait()
    deadline = time.monotonic() + 5  # the proxy notices its launcher is gone and exits
    while helper in _uids_of_processes().values() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert helper not in _uids_of_processes().values()
    assert list(reg.glob("*.json")), "the entry (and the helper uid) stays reserved until gc"
    gc = subprocess.run([sys.executable, "-m", "corral", "sandbox", "gc"],
                        env={**os.environ, **corral_env},
                        capture_output=True, text=True, timeout=60, check=False)
    assert gc.returncode == 0, gc.stderr
    assert list(reg.glob("*.json")) == []
