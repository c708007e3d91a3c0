"""The audit store's WAL checkpoints, run on their own connection and thread.

SQLite's automatic checkpoint runs inside the ``COMMIT`` that crosses ``wal_autocheckpoint``
(1000 pages, ~250 of the relay's commits): the committing thread copies the WAL into the
database and syncs both, milliseconds during which the relay holds a proxy request waiting
for its ack (most of the audited request's p99). The store's writer connection therefore runs
with ``wal_autocheckpoint=0`` and this thread checkpoints instead, on a connection of its own.

Invariants:
- Durability is unchanged: a commit is durable once its frames are in the WAL (the writer's
  ``synchronous`` setting decides the sync, as before); a checkpoint only copies committed
  frames into the database file, so which connection runs it changes no guarantee.
- The checkpoints are ``PASSIVE``: they never take the write lock or wait for the writer, so a
  commit is never delayed by one (SQLite releases the GIL while it copies and syncs).
- The WAL stays bounded: every ``EVERY`` commits the thread is woken and checkpoints until a
  pass copies every frame with no commit in between (the next commit then starts the WAL
  over, as after SQLite's own checkpoint). Under a steady stream of commits that moment may
  not come: ``LIMIT`` commits after the last such pass, the committing thread checkpoints
  after its commit (no commit can land during that one), as SQLite's automatic checkpoint
  did, but with only the frames since the thread's last pass left to copy.
- A checkpoint failure is not a commit failure (the events are in the WAL): it is retried at
  the next wake-up, and a store that cannot be written fails its commits on its own.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable

__all__ = ["EVERY", "LIMIT", "Checkpointer"]

EVERY = 256  # commits between wake-ups: a relay commit writes ~4 pages, SQLite's own 1000
LIMIT = 2 * EVERY  # commits without a complete checkpoint, after which the writer does one
_PASSES = 4  # checkpoints per wake-up while commits keep landing during them


class Checkpointer:
    """Owns a connection opened by ``connect()`` in its daemon thread; ``committed()`` is
    called by the store after each commit, ``close()`` when the store closes."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._commits = 0
        self._caught = 0  # value of _commits when a checkpoint last copied the whole WAL
        self._since = 0  # commits since the thread was last woken
        self._due = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def committed(self, con: sqlite3.Connection) -> None:
        """Count a commit made on ``con`` (the writer's connection, idle now)."""
        with self._lock:
            self._commits += 1
            self._since += 1
            if self._since >= EVERY and not self._closed:
                self._since, self._due = 0, True
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="corral-audit-checkpoint")
                    self._thread.start()
                self._wake.notify()
            long = self._commits - self._caught >= LIMIT
        if long:
            with contextlib.suppress(sqlite3.Error):
                busy, log, copied = _checkpoint(con)
                if busy == 0 and log == copied:  # no commit can land before ours: it restarts
                    with self._lock:
                        self._caught = self._commits

    def _pass(self, con: sqlite3.Connection) -> bool:
        """One PASSIVE checkpoint; True once it copied every frame and no commit landed
        meanwhile (the WAL is then wholly in the database and the next commit restarts it)."""
        with self._lock:
            before = self._commits
            if before - self._caught >= LIMIT:
                return True  # the committing thread's turn: a pass now would only make it busy
        busy, log, copied = _checkpoint(con)
        with self._lock:
            if busy == 0 and log == copied and self._commits == before:
                self._caught = before
                return True
            return bool(busy != 0)  # a reader holds old frames: more passes would not help now

    def _run(self) -> None:
        con: sqlite3.Connection | None = None
        try:
            while True:
                with self._lock:
                    self._wake.wait_for(lambda: self._closed or self._due)
                    if self._closed:
                        return
                    self._due = False
                with contextlib.suppress(sqlite3.Error):  # retried at the next wake-up
                    if con is None:
                        con = self._connect()
                    for _ in range(_PASSES):
                        if self._pass(con):
                            break
        finally:
            if con is not None:
                con.close()

    def close(self) -> None:
        """Stop the thread (the store's last connection checkpoints as it closes)."""
        with self._lock:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()


def _checkpoint(con: sqlite3.Connection) -> tuple[int, int, int]:
    """(busy, frames in the WAL, frames copied). Read to the end: a statement left open would
    hold a read lock on the WAL, and no commit would start it over."""
    busy, log, copied = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
    return int(busy), int(log), int(copied)

