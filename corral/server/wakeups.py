"""Wake-ups for long polls within one server process: a decision committed here wakes the
requests waiting on it at once, instead of at their next read of the database.

Invariants:
- A wake-up is only a hint to read the database again; the row is the truth. A lost or
  spurious wake-up costs one read or one poll interval, never a wrong answer, so waiters keep
  their periodic read (a decision made on another replica is seen by it).
- ``notify`` is called after the commit it announces, from any thread; each waiter's event is
  set on its own event loop. A waiter clears its event before it reads, so a notify between
  its read and its wait is never lost.
- Keys are random ids (approval ids): one registry per process serves every app in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

__all__ = ["Wakeups"]


class Wakeups:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``notify(key)`` is called while the block runs."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiting.setdefault(key, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiters = self._waiting.get(key)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiting[key]

    def notify(self, key: str) -> None:
        with self._lock:
            waiters = list(self._waiting.get(key, ()))
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed: its waiter is gone
                loop.call_soon_threadsafe(event.set)
