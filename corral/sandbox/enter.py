"""A second command in a live sandbox (``corral sandbox exec``), and ending one (``kill``).

The launcher that built the sandbox owns it; this module works from the outside with only the
registry entry and the sandbox's root-only directory (``exec.json``: the first command's
environment and the ``--rw`` paths, written by ``Sandbox.spawn``).

How a command gets in, with the same layers as the first one:
- cgroup: the child joins the sandbox's cgroup before anything else (limits, accounting,
  ``kill``);
- namespaces: ``nsenter`` into the mount, pid, network, ipc, uts and cgroup namespaces of the
  sandbox's pid-namespace init (bwrap's, found in the cgroup by its ``NSpid`` of 1), with its
  root directory, so the same mounts, hidden paths and network rules apply;
- seccomp: the same filter (``corral.sandbox.seccomp``), loaded by a tiny isolated Python
  step just before the privilege-drop shim, as bwrap loads it before the shim;
- the shim (``corral.sandbox.shim``): same uid/gid, no capabilities, no_new_privs, Landlock
  with the same writable paths.

Invariants: nothing runs inside unless the sandbox's launcher is alive and its init is found;
``exec.start`` (via ``sandbox exec``) is durable in the sandbox's trail before the command
starts, and ``sandbox.kill`` before anything is killed. Agent-controlled data (its
environment as it is now, its cwd) is never read: only what the launcher recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from corral.errors import CorralError
from corral.sandbox import registry

if TYPE_CHECKING:
    from corral.sandbox.cgroups import Cgroup

__all__ = ["enter_command", "find_entry", "find_init", "kill"]

EXIT_CORRAL = 125

# Loads the seccomp program from fd argv[1] and execs argv[2:]. -I -S: nothing from the
# environment or the sandbox's files steers the interpreter.
_SECCOMP_LOADER = r"""
import ctypes, os, sys
prog = os.read(int(sys.argv[1]), 1 << 20)
os.close(int(sys.argv[1]))
class F(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
libc = ctypes.CDLL(None, use_errno=True)
f = F(len(prog) // 8, prog)
if libc.prctl(22, 2, ctypes.byref(f), 0, 0) != 0:
    sys.stderr.write("corral: cannot load the seccomp filter: %s\n"
                     % os.strerror(ctypes.get_errno()))
    os._exit(125)
os.execv(sys.argv[2], sys.argv[2:])
"""


def find_entry(sandbox_id: str) -> registry.Entry:
    for entry in registry.entries():
        if entry.id == sandbox_id:
            if not registry.launcher_alive(entry):
                raise CorralError(f"sandbox {sandbox_id} is a leftover of a launcher that is "
                                  "gone; 'corral sandbox gc' removes it", exit_code=EXIT_CORRAL)
            return entry
    raise CorralError(f"no live sandbox {sandbox_id} (see 'corral sandbox list')",
                      exit_code=EXIT_CORRAL)


def _cgroup(entry: registry.Entry) -> Cgroup:
    from corral.sandbox.cgroups import Cgroup

    return Cgroup.open(entry.cgroup or f"corral-{entry.id}")


def find_init(entry: registry.Entry) -> int:
    """The host pid of the sandbox's pid-namespace init (the first one, if several spawns)."""
    cgroup = _cgroup(entry)
    mine = os.readlink("/proc/self/ns/pid")
    for pid in cgroup.pids():
        try:
            with open(f"/proc/{pid}/status") as f:
                nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
            if len(nspid) >= 2 and nspid[-1] == "1" and os.readlink(f"/proc/{pid}/ns/pid") != mine:
                return pid
        except OSError:
            continue
    raise CorralError(f"sandbox {entry.id} has no running command to join",
                      exit_code=EXIT_CORRAL)


def _recorded(entry: registry.Entry) -> dict[str, object]:
    try:
        with open(entry.dir / "exec.json") as f:
            data = json.load(f)
    except (OSError, ValueError):
        raise CorralError(f"sandbox {entry.id} has not started its command yet",
                          exit_code=EXIT_CORRAL) from None
    return data if isinstance(data, dict) else {}


def enter_command(entry: registry.Entry, argv: Sequence[str], *, tty: bool
                  ) -> tuple[list[str], dict[str, str], list[int], Cgroup]:
    """``(argv, env, fds to pass, cgroup)`` that run ``argv`` inside the sandbox; the caller
    starts it with ``cgroup.attach_self`` as its preexec step and closes the fds after."""
    from corral.sandbox.command import shim_prefix
    from corral.sandbox.mounts import WORKSPACE
    from corral.sandbox.preflight import check_host
    from corral.sandbox.seccomp import build_filter

    if not argv:
        raise CorralError("no command given", exit_code=EXIT_CORRAL)
    init = find_init(entry)
    data = _recorded(entry)
    raw_env, raw_rw = data.get("env"), data.get("rw")
    env = {str(k): str(v) for k, v in raw_env.items()} if isinstance(raw_env, dict) else {}
    rw = [str(p) for p in raw_rw] if isinstance(raw_rw, list) else []
    fd = os.memfd_create("corral-seccomp", 0)
    os.write(fd, build_filter())
    os.lseek(fd, 0, os.SEEK_SET)
    check_host()
    import shutil

    nsenter = shutil.which("nsenter", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if nsenter is None:
        raise CorralError("nsenter (util-linux) is needed to enter a sandbox",
                          exit_code=EXIT_CORRAL)
    inner = ["/usr/bin/setsid", "--ctty", "--"] if tty else []
    cmd = [nsenter, "-t", str(init), "-m", "-p", "-n", "-i", "-u", "-C", "-r",
           "-W", WORKSPACE, "--", "/usr/bin/python3", "-I", "-S", "-c", _SECCOMP_LOADER,
           str(fd), *inner, *shim_prefix(entry.uid, entry.gid, rw), *argv]
    return cmd, env, [fd], _cgroup(entry)


def kill(entry: registry.Entry, *, timeout: float = 20.0) -> int:
    """SIGKILL every process in the sandbox (its launcher then tears it down); wait until the
    entry is gone. Returns how many processes were killed."""
    import time

    cgroup = _cgroup(entry)
    count = len(cgroup.pids())
    cgroup.kill_all()
    end = time.monotonic() + timeout
    path = Path(registry.registry_dir() / f"{entry.id}.json")
    while path.exists() and time.monotonic() < end:
        time.sleep(0.05)
    if path.exists():
        raise CorralError(f"sandbox {entry.id}: its processes were killed but its launcher "
                          f"(pid {entry.pid}) has not torn it down yet", exit_code=EXIT_CORRAL)
    return count
