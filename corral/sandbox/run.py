"""``run_command``: what ``corral run`` does once its arguments are understood.

One sandbox, one command, the command's exit status as ours. Invariants (DESIGN "Exit codes"):
the agent's status passes through; a wall or idle timeout is 124, a memory kill 137, each with
one ``corral:`` line on stderr saying what happened and which limit to change; when our stdin is
a terminal the agent gets a pty we own, and the user's terminal mode is restored however the
run ends.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from corral.sandbox.audit import AuditSink
from corral.sandbox.launch import Sandbox
from corral.sandbox.spec import SandboxSpec
from corral.sandbox.supervise import supervise

if TYPE_CHECKING:
    from corral.sandbox.pty import Pty  # loaded only when stdin is a terminal

__all__ = ["EXIT_OOM", "RunHooks", "Terminated", "run_command"]


class RunHooks(Protocol):
    """Where the launcher plugs in the proxy (and anything else living beside a run).

    ``started`` runs once every layer exists and before the command starts: create listeners
    with ``sb.run_in_netns`` on ``spec.proxy_port``/``spec.dns_port`` and hand them to what
    serves them (serving may be ready only after the command started: connections wait in the
    kernel's backlog), and return environment to add for the command (the launcher's egress
    puts its proxy and CA variables in the spec beforehand and adds none here). Raising
    aborts the run (exit 125) with full teardown. ``finished`` runs after the command ended,
    before teardown, also when it failed.
    """

    def started(self, sb: Sandbox) -> Mapping[str, str]: ...

    def finished(self, sb: Sandbox) -> None: ...

EXIT_OOM = 137


def _human_size(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def _human_time(s: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"


def run_command(
    spec: SandboxSpec,
    argv: Sequence[str],
    *,
    audit: AuditSink | None = None,
    hooks: RunHooks | None = None,
) -> int:
    """Run ``argv`` in a fresh sandbox built from ``spec``; return corral's exit status."""
    with _terminating_signals_interrupt():
        return _run(spec, argv, audit, hooks)


class Terminated(Exception):
    """SIGTERM/SIGHUP arrived while no command was running to forward it to."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum} before the command finished")
        self.signum = signum


@contextlib.contextmanager
def _terminating_signals_interrupt() -> Iterator[None]:
    """Until supervision forwards signals, SIGTERM/SIGHUP unwind (and so tear down) like ^C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _run(
    spec: SandboxSpec, argv: Sequence[str], audit: AuditSink | None, hooks: RunHooks | None
) -> int:
    tty = os.isatty(0)  # the agent never gets the user's terminal itself
    with Sandbox.create(spec, audit) as sb:
        pty: Pty | None = None
        env: dict[str, str] = {}
        try:
            if hooks is not None:
                env.update(hooks.started(sb))
            if tty:
                from corral.sandbox.pty import Pty

                pty = Pty(0)
                proc = sb.spawn(argv, stdin=pty.slave, stdout=pty.slave, stderr=pty.slave,
                                tty=True, env=env)
                pty.close_slave()
                pty.raw()
                pumps = [(0, pty.master, False), (pty.master, 1, True)]
            else:
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                try:
                    proc = sb.spawn(argv, stdin=0, stdout=out_w, stderr=err_w, env=env)
                finally:
                    os.close(out_w)
                    os.close(err_w)
                os.set_blocking(out_r, False)
                os.set_blocking(err_r, False)
                pumps = [(out_r, 1, True), (err_r, 2, True)]
            if not gc.isenabled():  # ``corral run`` held collections off during setup
                gc.freeze()  # the launch's long-lived objects: never scanned again
                gc.enable()
            lim = spec.limits
            outcome = supervise(
                proc,
                pumps=pumps,
                wall=lim.wall,
                idle=lim.idle,
                cpu_usage=sb.cpu_usage_ns,
                agent_pid=lambda: sb.agent_pid(proc),
                kill_all=sb.kill_all,
                on_winch=pty.resize if pty is not None else None,
                input_activity=pty is not None,  # at a terminal, typing is activity
            )
        finally:
            if pty is not None:
                pty.close()
            if hooks is not None:
                hooks.finished(sb)
        code = outcome.returncode
        if outcome.timeout == "wall" and lim.wall is not None:
            _say(f"wall-time limit of {_human_time(lim.wall)} reached; the sandbox was stopped "
                 "(raise limits.wall in a policy, or --timeout, to allow more)")
        elif outcome.timeout == "idle" and lim.idle is not None:
            quiet = "no input, output or CPU use" if pty is not None else "no output and no CPU use"
            _say(f"{quiet} for {_human_time(lim.idle)}; the sandbox was stopped (raise "
                 "limits.idle in a policy, or --idle, to allow more)")
        elif sb.oom_killed():
            mem = _human_size(lim.memory) if lim.memory else "its memory limit"
            _say(f"the sandbox ran out of memory ({mem}) and was killed "
                 "(raise limits.memory in a policy, or --memory, to allow more)")
            code = EXIT_OOM
        elif sb.pids_exhausted():
            _say(f"note: the sandbox reached its process limit ({lim.pids} pids)")
        sb._audit("sandbox.exit", status=code, timeout=outcome.timeout)
        return code


def _say(msg: str) -> None:
    sys.stderr.write(f"\r\ncorral: {msg}\n" if os.isatty(2) else f"corral: {msg}\n")
    sys.stderr.flush()
