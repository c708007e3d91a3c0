"""Process layer: pid, ipc and uts namespaces; exit status, signals and teardown of a run.

Runs go through the real ``corral run`` CLI where the behaviour is the CLI's (exit codes,
signal forwarding, teardown); namespace probes use the API with a host-side control.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from escape.conftest import run_in

pytestmark = pytest.mark.root


def test_pid_namespace_hides_host_processes(sandbox) -> None:
    sb = sandbox()
    pids = [p for p in run_in(sb, ["ls", "/proc"]).out.split() if p.isdigit()]
    assert len(pids) < 6, pids
    host_pids = [p for p in os.listdir("/proc") if p.isdigit()]
    assert len(host_pids) > 20  # control: the host has many


def test_ipc_namespace_hides_host_segments(sandbox) -> None:
    made = subprocess.run(["ipcmk", "-M", "4096"], capture_output=True, text=True, check=True)
    shmid = made.stdout.split()[-1]
    try:
        sb = sandbox()
        assert shmid not in run_in(sb, ["ipcs", "-m"]).out
        assert shmid in subprocess.run(["ipcs", "-m"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ipcrm", "-m", shmid], check=False)


def test_uts_namespace(sandbox) -> None:
    sb = sandbox()
    assert run_in(sb, ["hostname"]).out.strip() == f"corral-{sb.id}"
    assert run_in(sb, ["hostname", "evil"]).returncode != 0
    assert os.uname().nodename != f"corral-{sb.id}"


@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 1", 1), ("exit 42", 42),
                                              ("kill -TERM $$", 128 + 15)])
def test_exit_status_passes_through(corral, script: str, code: int) -> None:
    assert corral("--", "sh", "-c", script).returncode == code


def test_stdio_streams(corral) -> None:
    done = corral("--", "sh", "-c", "cat; echo to-err >&2", input=b"from-stdin\n")
    assert done.out == "from-stdin\n"
    assert done.err.splitlines()[0] == "to-err"  # then corral's audit summary


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_forwarded(privileged, sig: signal.Signals) -> None:
    code = ("import os,signal,sys,time\n"
            f"signal.signal(signal.{sig.name},\n"
            "              lambda s,f: (os.write(1, b'got %d\\n' % s), os._exit(7)))\n"
            "os.write(1, b'ready\\n')\ntime.sleep(30)\n")
    env = {**os.environ, **privileged}
    proc = subprocess.Popen([sys.executable, "-m", "corral", "run", "--", "/usr/bin/python3",
                             "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:  # the test failed mid-way: kill, then collect the leftovers
            proc.kill()
            proc.wait()
            subprocess.run([sys.executable, "-m", "corral", "sandbox", "gc"], env=env,
                           capture_output=True, check=False)
    assert out.strip() == f"got {int(sig)}"
    assert proc.returncode == 7


def _sandbox_uid_processes(only: int | None = None) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        uid = int(status.split("Uid:")[1].split()[0])
        if uid == only or (only is None and 2_000_000_000 <= uid < 2_001_000_000):
            found.append(pid)
    return found


def test_teardown_leaves_nothing(corral, privileged) -> None:
    started = time.monotonic()
    done = corral("--", "sh", "-c",
                  "hostname; id -u; setsid sleep 300 & nohup sleep 300 >/dev/null 2>&1 & exit 5")
    assert done.returncode == 5
    name, uid = done.out.split()[:2]
    assert time.monotonic() - started < 10  # background processes do not keep the run alive
    assert _sandbox_uid_processes(int(uid)) == []
    reg = Path(privileged["CORRAL_HOME"]) / "sandboxes"
    assert sorted(p.name for p in reg.iterdir()) == [".lock"]
    from corral.sandbox.cgroups import list_corral_cgroups

    assert name.startswith("corral-")
    assert name not in list_corral_cgroups()


def test_killed_child_still_torn_down(corral, privileged) -> None:
    done = corral("--", "sh", "-c", "kill -KILL $$")
    assert done.returncode == 128 + 9
    reg = Path(privileged["CORRAL_HOME"]) / "sandboxes"
    assert sorted(p.name for p in reg.iterdir()) == [".lock"]
