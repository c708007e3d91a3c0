"""The live line ``corral run`` prints on a terminal for each request the proxy denies.

``corral: denied GET api.example.com/admin (rule p.yaml:4)``, as the denial is written to the
trail, so a user watching an interactive agent sees what it was refused while it happens (the
run summary and ``corral audit`` have the rest).

Invariants:
- Host, method, path and rule come from the agent's traffic or a policy: shown only through
  ``corral.render.visible`` (no escape sequence reaches the terminal).
- The proxy's audit relay never waits for the terminal: lines go through a bounded queue to a
  printer thread; when it is full (a terminal paused with ^S, a flood) lines are dropped, never
  events. A folded burst (``count``) is one line saying how many.
- The trail is unchanged: the wrapper passes every call through and only looks at denials.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from corral.render import visible

__all__ = ["deny_line", "echo_denials"]

_DENY = "proxy.deny"
_QUEUE = 256


def deny_line(data: dict[str, Any]) -> str:
    """One line for one ``proxy.deny`` event's data."""
    host = str(data.get("host", "?"))
    port = data.get("port")
    where = host if port in (None, 80, 443) else f"{host}:{port}"
    method = data.get("method")
    what = f"{method} {where}{data.get('path') or ''}" if method else f"connection to {where}"
    rule = str(data.get("rule") or "default deny")
    count = data.get("count")
    times = f", {count} times" if isinstance(count, int) and count > 1 else ""
    return f"corral: denied {visible(str(what))} (rule {visible(rule)}{times})"


class _Echo:
    """A trail that prints a line for each denial written through it."""

    def __init__(self, trail: Any, lines: queue.Queue[str]) -> None:
        self._trail, self._lines = trail, lines

    def _seen(self, type_: object, data: dict[str, Any]) -> None:
        if str(type_) == _DENY:
            with contextlib.suppress(queue.Full):
                self._lines.put_nowait(deny_line(data))

    def emit_held(self, type_: Any, /, **data: Any) -> Any:
        ticket = self._trail.emit_held(type_, **data)
        self._seen(type_, data)
        return ticket

    def emit(self, type_: Any, /, **data: Any) -> Any:
        seq = self._trail.emit(type_, **data)
        self._seen(type_, data)
        return seq

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trail, name)


def _printer(lines: queue.Queue[str], fd: int) -> None:
    while True:
        line = lines.get()
        with contextlib.suppress(OSError):
            # the user's terminal is raw during the run: return the carriage ourselves
            os.write(fd, f"\r\n{line}\r\n".encode("utf-8", "replace"))


def echo_denials(proxy_audit: Callable[[str], Any], fd: int = 2) -> Callable[[str], Any]:
    """``proxy_audit`` whose trails also print each denial on ``fd``."""
    lines: queue.Queue[str] = queue.Queue(_QUEUE)
    threading.Thread(target=_printer, args=(lines, fd), daemon=True,
                     name="corral-denials").start()
    return lambda sandbox_id: _Echo(proxy_audit(sandbox_id), lines)
