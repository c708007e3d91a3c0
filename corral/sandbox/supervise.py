"""Watching a running sandbox: stream its output, forward signals, enforce wall and idle time.

Invariants:
- Output is copied as it arrives (no buffering beyond one read), so streams stay live.
- Idle means no output *and* no CPU time used by the sandbox's cgroup for ``limits.idle``
  seconds (and, with ``input_activity`` — a terminal run — no input either: a user typing at a
  prompt that does not echo is not idle); wall is time since start. Either ends the run:
  every process of the sandbox is killed and the outcome says why (exit 124).
- SIGINT, SIGTERM and SIGHUP received by corral are forwarded to the agent's process (the one
  bwrap reports on its info fd); a third one kills the whole sandbox. SIGWINCH resizes the pty.
  The previous handlers are restored when supervision ends.
"""

# No ``from __future__ import annotations``: a NamedTuple would compile a ForwardRef per field,
# on every launch (docs/benchmarks.md, "Launch-path choices").

import contextlib
import errno
import os
import select
import selectors
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import NamedTuple, Protocol

__all__ = ["EXIT_TIMEOUT", "Outcome", "supervise"]

EXIT_TIMEOUT = 124
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Outcome(NamedTuple):
    returncode: int
    timeout: str | None = None  # "wall" | "idle"


class _Proc(Protocol):
    """What ``supervise`` needs from the child: pid, wait()."""

    @property
    def pid(self) -> int: ...

    def wait(self, timeout: float | None = None) -> int: ...


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        except OSError:
            return  # the reader went away (closed pipe/terminal); keep the agent running
        view = view[n:]


class _Clock:
    """The wall and idle timers of one run; ``last`` is the last sign of activity."""

    __slots__ = ("cpu_every", "cpu_usage", "idle", "last", "last_cpu", "next_cpu_check",
                 "start", "wall")

    def __init__(self, wall: float | None, idle: float | None,
                 cpu_usage: Callable[[], int]) -> None:
        self.start = self.last = time.monotonic()
        self.wall, self.idle, self.cpu_usage = wall, idle, cpu_usage
        self.last_cpu = cpu_usage() if idle is not None else 0
        self.cpu_every = min(1.0, idle / 4) if idle is not None else 1.0
        self.next_cpu_check = self.start + self.cpu_every

    def wait(self) -> float:
        """How long the next select may block before a limit or a CPU look is due."""
        now = time.monotonic()
        wait = 1.0
        if self.wall is not None:
            wait = min(wait, max(0.0, self.start + self.wall - now))
        if self.idle is not None:
            wait = min(wait, max(0.0, self.last + self.idle - now),
                       max(0.0, self.next_cpu_check - now))
        return wait

    def expired(self) -> str | None:
        """``"wall"`` or ``"idle"`` once that limit is reached, else None."""
        now = time.monotonic()
        if self.wall is not None and now - self.start >= self.wall:
            return "wall"
        if self.idle is None or now < self.next_cpu_check:
            return None
        self.next_cpu_check = now + self.cpu_every
        cpu = self.cpu_usage()
        if cpu != self.last_cpu:  # the sandbox used CPU since the previous look
            self.last, self.last_cpu = now, cpu
        return "idle" if now - self.last >= self.idle else None


def _install_signals(agent_pid: Callable[[], int | None], kill_all: Callable[[], None],
                     on_winch: Callable[[], None] | None) -> dict[signal.Signals, object]:
    """Forward SIGINT/SIGTERM/SIGHUP to the agent (the third kills the sandbox); returns the
    handlers to restore. Only the main thread may set handlers: elsewhere none are."""
    strikes = 0

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal strikes
        strikes += 1
        if strikes >= 3:
            kill_all()
            return
        pid = agent_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    saved: dict[signal.Signals, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _FORWARDED:
            saved[sig] = signal.signal(sig, forward)
        if on_winch is not None:
            winch = on_winch
            saved[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda s, f: winch())
    return saved


def supervise(
    proc: _Proc,
    *,
    pumps: list[tuple[int, int, bool]],
    wall: float | None,
    idle: float | None,
    cpu_usage: Callable[[], int],
    agent_pid: Callable[[], int | None],
    kill_all: Callable[[], None],
    on_winch: Callable[[], None] | None = None,
    input_activity: bool = False,
) -> Outcome:
    """Run until the child exits or a time limit hits.

    ``pumps`` are ``(src, dst, is_output)``; ``src`` must be non-blocking. Output pumps count as
    activity for the idle timer; input pumps too with ``input_activity``.
    """
    clock = _Clock(wall, idle, cpu_usage)
    saved = _install_signals(agent_pid, kill_all, on_winch)
    sel = selectors.DefaultSelector()
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ, None)
    for src, dst, is_out in pumps:
        sel.register(src, selectors.EVENT_READ, (dst, is_out))
    try:
        timeout = _watch(sel, pidfd, clock, input_activity)
        if timeout:
            kill_all()
        _drain(sel, pidfd, pumps)
        code = proc.wait()
    finally:
        sel.close()
        os.close(pidfd)
        for sig, handler in saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    if timeout is not None:
        return Outcome(EXIT_TIMEOUT, timeout)
    return Outcome(code if code >= 0 else 128 - code)


def _watch(sel: selectors.BaseSelector, pidfd: int, clock: _Clock,
           input_activity: bool) -> str | None:
    """Pump until the child exits (None) or a limit is reached (its name)."""
    while True:
        exited = False
        for key, _ in sel.select(clock.wait()):
            if key.fd == pidfd:
                exited = True
            elif _pump(sel, key) and (key.data[1] or input_activity):
                clock.last = time.monotonic()
        if exited:
            return None
        timeout = clock.expired()
        if timeout:
            return timeout


def _drain(sel: selectors.BaseSelector, pidfd: int, pumps: list[tuple[int, int, bool]]) -> None:
    """Stop reading input and copy what output is left, for up to two seconds."""
    for src, _dst, is_out in pumps:
        if not is_out and src in sel.get_map():
            sel.unregister(src)
    deadline = time.monotonic() + 2.0
    while len(sel.get_map()) > 1 and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            if key.fd != pidfd:
                _pump(sel, key)


def _pump(sel: selectors.BaseSelector, key: selectors.SelectorKey) -> bool:
    """Copy one chunk; unregister the source at EOF. True if bytes moved."""
    try:
        data = os.read(key.fd, 65536)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno not in (errno.EIO, errno.EBADF):
            raise
        data = b""
    if not data:
        sel.unregister(key.fd)
        return False
    _write_all(key.data[0], data)
    return True
