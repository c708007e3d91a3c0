"""The command line of one spawn: bwrap's arguments, the shim, the seccomp program, the env.

(Records here and in the modules it uses are named tuples or plain classes, not dataclasses:
``corral run`` imports them on every launch, and importing ``dataclasses`` is not free.)

Invariants: the environment inside starts from ``BASE_ENV`` (never the launcher's own, which
may hold secrets); only terminal description variables pass through. Every command runs behind
the privilege-drop shim and under the seccomp filter; a missing layer module refuses the run.
The info pipe's read end is returned to the caller, who must close it.
"""

# No ``from __future__ import annotations``: a NamedTuple would compile a ForwardRef per field,
# on every launch (docs/benchmarks.md, "Launch-path choices").

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from corral.errors import CorralError
from corral.sandbox.mounts import HOME, SANDBOX_USER, WORKSPACE, BwrapPlan, passwd_overlay
from corral.sandbox.preflight import EXIT_CORRAL, check_host
from corral.sandbox.spec import SandboxSpec
from corral.sandbox.workspace import expand_user

__all__ = ["BASE_ENV", "Command", "Layout", "build", "environment", "preload", "shim_prefix"]

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": HOME,
    "USER": SANDBOX_USER,
    "LOGNAME": SANDBOX_USER,
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
}
_PASSED_ENV = ("TERM", "COLORTERM", "NO_COLOR", "COLUMNS", "LINES")


class Layout(NamedTuple):
    """Where a sandbox's pieces are on the host (built by ``Sandbox``)."""

    sandbox_id: str
    uid: int
    gid: int
    spec: SandboxSpec
    workspace: Path  # host directory shown at /workspace
    workspace_src: Path  # what bwrap binds (the ID-mapped staging point, or the dir itself)
    home: Path
    home_src: Path
    hidden: tuple[Path, ...]
    mask_file: Path
    mask_dir: Path
    rw: tuple[tuple[Path, Path], ...] = ()  # --rw: (host dir, what bwrap binds there)


class Command(NamedTuple):
    args: list[str]
    fds: list[int]  # to pass to bwrap (the caller closes them after the spawn)
    info_fd: int  # read end of bwrap's info pipe (non-blocking)


def environment(spec: SandboxSpec, env: Mapping[str, str] | None = None) -> dict[str, str]:
    out = dict(BASE_ENV)
    out.update({k: os.environ[k] for k in _PASSED_ENV if k in os.environ})
    out.update(spec.env)
    out.update(env or {})
    return out


def preload() -> None:
    """Load now what ``build`` needs (the shim's code, the seccomp program), so the launcher
    does it while it waits for the network namespace. Errors are left to ``build`` to report."""
    try:
        from corral.sandbox.seccomp import build_filter
        from corral.sandbox.shim import shim_payload

        shim_payload()  # both memoized: ``build`` gets the same result, or raises the same error
        build_filter()
    except Exception:
        return


def shim_prefix(uid: int, gid: int, rw: Sequence[str] = ()) -> list[str]:
    try:
        from corral.sandbox.shim import ShimConfig, shim_argv
    except ImportError as err:
        raise CorralError(
            f"the privilege-drop layer is missing from this corral install ({err})",
            exit_code=EXIT_CORRAL,
        ) from None
    return list(shim_argv(ShimConfig(uid=uid, gid=gid, writable=(WORKSPACE, HOME, "/tmp", *rw))))


def _seccomp_fd() -> int:
    from corral.sandbox.seccomp import build_filter

    fd = os.memfd_create("corral-seccomp", 0)
    os.write(fd, build_filter())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def build(lay: Layout, argv: Sequence[str], *, tty: bool, cwd: str) -> Command:
    """The full bwrap command line for ``argv`` in the sandbox described by ``lay``."""
    spec = lay.spec
    plan = BwrapPlan(args=[check_host()["bwrap"]])
    plan.base(lay.sandbox_id, spec.tmp_size, new_session=not tty)
    plan.bind(lay.workspace_src, WORKSPACE, writable=True, mapped_from=lay.workspace)
    plan.bind(lay.home_src, HOME, writable=True, mapped_from=lay.home)
    for extra in spec.files.read:
        real = Path(os.path.realpath(expand_user(extra)))
        plan.bind(real, str(real), writable=False)
    for host, src in lay.rw:  # at their host path, like files.read, but writable
        plan.bind(src, str(host), writable=True, mapped_from=host)
    passwd, group = passwd_overlay(lay.uid, lay.gid)
    plan.data_file(passwd, "/etc/passwd")
    plan.data_file(group, "/etc/group")
    for inside, content in sorted(spec.extra_files.items()):
        plan.data_file(content, inside)
    plan.mask(list(lay.hidden), lay.mask_file, lay.mask_dir)
    info_r, info_w = os.pipe()
    os.set_blocking(info_r, False)
    plan.finish(info_w, _seccomp_fd(), cwd)
    inner = ["/usr/bin/setsid", "--ctty", "--"] if tty else []
    plan.args += ["--", *inner, *shim_prefix(lay.uid, lay.gid, [str(h) for h, _ in lay.rw]), *argv]
    return Command(plan.args, plan.fds, info_r)
