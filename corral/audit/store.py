"""The audit store: SQLite (WAL) with one hash chain per sandbox and a global ledger.

Invariants kept here:

- Durable before the action: ``Trail.emit`` returns only after the transaction holding the
  event has committed (WAL; ``synchronous=NORMAL`` survives a crash of corral, ``FULL`` also a
  power loss). A caller acts after ``emit`` returns, never before.
- One writer thread per store object commits queued events in groups (one transaction per
  group), so many concurrent emitters share one commit.
- Chains stay valid with several processes writing: every group runs in ``BEGIN IMMEDIATE``
  (the database write lock) and reads each chain's head (last seq and hash) from the
  ``chains`` table inside that transaction; the ledger head is read the same way.
- WAL checkpoints run on a connection and thread of their own (``corral.audit.checkpoint``),
  never inside a commit: an emitter waits for its group's commit, not for a checkpoint.
- Root only: the state dir is 0700 and the database and its WAL/SHM files are 0600; the
  sandbox never gets a path to them (the harness hides the state dir).
- Fail closed: if the store cannot be written (disk full, I/O error, read-only), the failing
  group's emitters and every later emit get ``AuditUnavailable``; the store does not silently
  continue with a gap. ``open`` refuses a store it cannot write (``CorralError``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from corral.audit.append import ChainRefused, Row, append, chained
from corral.audit.checkpoint import Checkpointer
from corral.audit.db import (
    OBSOLETE,
    SCHEMA,
    connect,
    free_bytes,
    insert_events,
    ledger_body,
    needs_schema,
    tighten,
)
from corral.audit.events import (
    GENESIS,
    SCHEMA_VERSION,
    Actor,
    EventError,
    EventType,
    canonical_json,
    check_sandbox_id,
    event_hash,
    validate,
)
from corral.errors import CorralError

__all__ = ["AuditStore", "AuditUnavailable", "Ticket", "Trail", "connect", "default_path"]

MIN_FREE_BYTES = 16 * 1024 * 1024
_BUSY_RETRIES = 3  # each attempt already waits busy_timeout (10 s) for the lock
_LINGER = 0.0005  # seconds a writer waits for active emitters to catch up


class AuditUnavailable(CorralError):
    """The audit store cannot record events: the caller must stop the action (e.g. egress)."""


def default_path() -> Path:
    from corral.dirs import state_dir

    return state_dir() / "audit.db"


class Ticket:
    """A queued event, filled in by the writer thread. ``wait()`` returns its seq once the
    group holding it has committed (``AuditUnavailable`` if the store failed, or on timeout)."""

    __slots__ = (
        "actor",
        "data",
        "done",
        "error",
        "group",
        "kind",
        "result",
        "sandbox",
        "seq",
        "ts",
        "type",
    )

    def __init__(self, kind: str, sandbox: str, type_: str, data: str, actor: str) -> None:
        self.kind = kind
        self.sandbox = sandbox
        self.type = type_
        self.data = data
        self.actor = actor
        self.ts = time.time_ns() // 1000
        self.seq = 0
        self.done = False
        self.error: str | None = None
        self.result = ""
        self.group: _Group | None = None

    def wait(self, timeout: float | None = None) -> int:
        if not self.done:
            assert self.group is not None
            if not self.group.wait(timeout):
                raise AuditUnavailable("audit store did not commit in time")
        if self.error is not None:
            raise AuditUnavailable(self.error)
        return self.seq


class _Group:
    """Events committed in one transaction; their emitters wait on one event (no thundering
    herd: a commit wakes only the threads whose events it holds). The event is made only when
    someone waits before the commit ends: the relay, which commits on its own thread, never
    does, and a ``threading.Event`` costs more than the rest of a group's bookkeeping."""

    __slots__ = ("done", "event", "items", "lock")

    def __init__(self, lock: threading.Lock) -> None:
        self.items: list[Ticket] = []
        self.lock = lock  # the store's: ``done`` and ``event`` change under it
        self.done = False
        self.event: threading.Event | None = None

    def wait(self, timeout: float | None) -> bool:
        with self.lock:
            if self.done:
                return True
            if self.event is None:
                self.event = threading.Event()
            event = self.event
        return event.wait(timeout)


class Trail:
    """One sandbox's chain. ``emit`` blocks until the event is committed; thread-safe."""

    def __init__(self, store: AuditStore, sandbox_id: str, actor: Actor) -> None:
        self.store, self.sandbox_id, self.actor = store, sandbox_id, actor
        self._actor_json = actor.to_json()

    def emit_nowait(self, type_: str | EventType, /, **data: Any) -> Ticket:
        """Queue an event (validated now) and return a ticket to wait on."""
        return self._queue(str(type_), data, lead=False)

    def emit(self, type_: str | EventType, /, **data: Any) -> int:
        """Record an event and return its sequence number once it is durable."""
        ticket = self._queue(str(type_), data, lead=True)
        self.store._lead()
        return ticket.wait()

    def emit_held(self, type_: str | EventType, /, **data: Any) -> Ticket:
        """Queue an event (validated now) for the caller's own ``commit()``: a caller that
        queues several events then commits them on its thread saves the writer thread's
        hand-off. It must call ``commit()`` after queueing."""
        return self._queue(str(type_), data, lead=True)

    def emit_valid(self, type_: str, data: dict[str, Any]) -> Ticket:
        """``emit_held`` of a payload the caller has just passed through ``validate`` (the
        relay, which must validate before its budget counts the event): not checked twice."""
        return self._queue(type_, data, lead=True, checked=True)

    def append(self, rows: Sequence[Row]) -> int:
        """Commit ``rows`` (type, canonical JSON of a payload the caller validated, ts) on this
        thread as the chain's next events, in one transaction, once any commit under way has
        ended; returns the last one's seq. The relay's path (``corral.audit.append``): no
        ticket per event. ``AuditUnavailable`` if the store failed (then for everyone, as a
        failed group) or the chain is closed (then for these events only)."""
        return self.store._append(self.sandbox_id, self._actor_json, rows)

    def commit(self) -> None:
        """Commit the queued events on this thread, or, if a commit is under way, leave them
        to the writer thread, which takes them next; tickets tell when they are durable."""
        self.store._lead()

    def _queue(self, type_: str, data: dict[str, Any], *, lead: bool, checked: bool = False
               ) -> Ticket:
        if type_ == EventType.TRAIL_CLOSE:
            raise EventError("trail.close is written by Trail.close(), not emitted")
        if not checked:
            validate(type_, data)
        body = canonical_json({k: v for k, v in data.items() if v is not None})
        ticket = Ticket("event", self.sandbox_id, type_, body, self._actor_json)
        return self.store._submit(ticket, lead=lead)

    def close(self, status: str = "ok") -> str:
        """Append ``trail.close`` and the chain's closing hash to the ledger; returns that hash."""
        pending = Ticket(
            "close",
            self.sandbox_id,
            EventType.TRAIL_CLOSE,
            canonical_json({"status": status}),
            self._actor_json,
        )
        self.store._submit(pending, lead=True)
        self.store._lead()
        pending.wait()
        return pending.result


class AuditStore:
    """The audit database of this host. Use ``AuditStore.open()``; one per process is enough."""

    def __init__(self, path: Path, con: sqlite3.Connection, synchronous: str) -> None:
        self.path, self.synchronous = path, synchronous
        self._con = con
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # wakes the writer
        self._idle = threading.Condition(self._lock)  # wakes a Trail.append waiting its turn
        # Trail.append callers waiting for the commit slot: emitters then leave the next group
        # to the writer thread instead of taking the slot themselves, so a busy emitter can
        # never starve the relay (a waiter woken by ``_idle`` found the slot taken again).
        self._appending = 0
        self._group = _Group(self._lock)
        self._want = 0  # group size at which to wake a lingering writer
        self._committing = False  # one commit at a time: the writer thread or a leading emitter
        self._pid = os.getpid()
        self._broken: str | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        # the WAL checkpoints, off the committing thread (see corral.audit.checkpoint)
        con.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = Checkpointer(lambda: connect(path, synchronous))

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        *,
        synchronous: str = "NORMAL",
        min_free: int = MIN_FREE_BYTES,
    ) -> AuditStore:
        """Open (creating root-only) the store; ``CorralError`` if it cannot be written."""
        if synchronous not in ("NORMAL", "FULL"):
            raise CorralError(f"audit: synchronous must be NORMAL or FULL, not {synchronous!r}")
        if path is None:
            from corral.dirs import ensure_state_dir

            try:
                ensure_state_dir()
            except OSError as err:
                raise CorralError(f"audit store: cannot create the state dir: {err}") from None
            path = default_path()
        path = Path(path).absolute()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
            free = free_bytes(path.parent)
            if free < min_free:
                raise CorralError(
                    f"audit store {path}: only {free // 1024} KiB free on its filesystem; corral "
                    "will not start a sandbox it cannot audit (free space or set CORRAL_HOME)"
                )
            con = connect(path, synchronous)
            if needs_schema(con):
                con.executescript(SCHEMA)
            # One write transaction: proves the store is writable before any sandbox starts.
            con.execute("BEGIN IMMEDIATE")
            row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                con.execute("ROLLBACK")
                raise CorralError(
                    f"audit store {path} has schema version {row[0]}, newer than this corral "
                    f"({SCHEMA_VERSION}); upgrade corral"
                )
            con.execute(OBSOLETE)
            con.execute(
                "INSERT OR REPLACE INTO meta VALUES('schema_version', ?), ('last_open_us', ?)",
                (str(SCHEMA_VERSION), str(time.time_ns() // 1000)),
            )
            con.execute("COMMIT")
            tighten(path)
        except CorralError:
            raise
        except (OSError, sqlite3.Error) as err:
            raise CorralError(
                f"audit store {path} is not writable ({err}); corral will not start a sandbox "
                "it cannot audit (check the disk and CORRAL_HOME)"
            ) from None
        return cls(path, con, synchronous)

    def trail(self, sandbox_id: str, actor: Actor | None = None) -> Trail:
        """Open (or re-attach to) the chain of ``sandbox_id``; registered durably on return."""
        check_sandbox_id(sandbox_id)
        actor = actor or Actor.current()
        t = Trail(self, sandbox_id, actor)
        ticket = self._submit(Ticket("open", sandbox_id, "", "", t._actor_json), lead=True)
        self._lead()
        ticket.wait()
        return t

    @property
    def failure(self) -> str | None:
        """Why the store stopped taking events (every later emit raises), or None."""
        return self._broken

    def close(self) -> None:
        """Flush what is queued, stop the writer and close the database."""
        with self._lock:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            atexit.unregister(self._close_at_exit)
        self._checkpointer.close()  # first: the writer's close, the last one, checkpoints
        self._con.close()

    def _close_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer ----------------------------------------------------------------------------

    def _submit(self, pending: Ticket, *, lead: bool = False) -> Ticket:
        if self._pid != os.getpid():
            # The writer thread did not survive fork() (and the lock may have been copied held):
            # open a new store, or use a relay.
            raise AuditUnavailable("audit store inherited across fork; open it again")
        with self._lock:
            if self._broken is not None:
                raise AuditUnavailable(self._broken)
            if self._closed:
                raise AuditUnavailable("audit store is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="corral-audit-writer", daemon=True
                )
                self._thread.start()
                # Events queued with emit_nowait and never waited on still get written when
                # the interpreter exits normally (the writer is a daemon thread).
                atexit.register(self._close_at_exit)
            pending.group = self._group
            n = len(self._group.items) + 1
            self._group.items.append(pending)
            if lead and not self._committing:
                pass  # the caller commits this group itself (see _lead)
            elif n == 1 or n == self._want:
                self._wake.notify()
        return pending

    def _lead(self) -> None:
        """Commit the pending group on the caller's thread if no commit is under way.

        A blocking emitter that finds the store idle does not hand its event to the writer
        thread and wait to be woken (two thread switches per event); it commits the group
        itself. Emitters that arrive during a commit form the next group, which the writer
        thread takes when this commit ends. At most one commit runs at a time."""
        with self._lock:
            if self._committing or self._appending or not self._group.items:
                return
            group = self._group
            self._group = _Group(self._lock)
            self._committing = True
            broken = self._broken
        self._finish(group, broken or self._commit_group(group.items))

    def _group_full(self) -> bool:
        return len(self._group.items) >= self._want

    def _writer_may_go(self) -> bool:
        return not self._committing and not self._appending and (
            bool(self._group.items) or self._closed)

    def _run(self) -> None:
        last = 0  # size of the previous group: how many emitters are active
        while True:
            with self._lock:
                self._wake.wait_for(self._writer_may_go)
                if not self._group.items:
                    return  # closed and drained
                self._committing = True  # from here on, this group is the writer's
                if 1 < len(self._group.items) < last and not self._closed:
                    # Several emitters are active and not all are back yet: give them a moment
                    # so one commit serves them all (a lone emitter never waits here).
                    self._wake.wait_for(self._group_full, _LINGER)
                group = self._group
                last = self._want = len(group.items)
                self._group = _Group(self._lock)
                broken = self._broken
            self._finish(group, broken or self._commit_group(group.items))

    def _finish(self, group: _Group, error: str | None) -> None:
        with self._lock:
            if error is not None:
                if self._broken is None:
                    self._broken = f"audit store {self.path} failed: {error}"
                for t in group.items:
                    t.error = self._broken
            for t in group.items:
                t.done = True
            group.done = True
            event = group.event
            self._committing = False
            self._idle.notify()
            if self._group.items or self._closed:
                self._wake.notify()  # the next group (or the close) is the writer's
        if event is not None:
            event.set()

    def _append(self, sandbox: str, actor: str, rows: Sequence[Row]) -> int:
        """``Trail.append``: takes the commit slot as ``_lead`` does, waiting for it if a
        commit is under way (no hand-off to the writer thread)."""
        if self._pid != os.getpid():
            raise AuditUnavailable("audit store inherited across fork; open it again")
        with self._lock:
            self._appending += 1
            try:
                self._idle.wait_for(lambda: not self._committing)
            finally:
                self._appending -= 1
            if self._broken is not None:
                raise AuditUnavailable(self._broken)
            if self._closed:
                raise AuditUnavailable("audit store is closed")
            self._committing = True
        last: list[int] = []
        refused: list[str] = []

        def write() -> None:
            try:
                last.append(append(self._con, sandbox, actor, rows))
            except ChainRefused as err:
                refused.append(str(err))

        error = self._transact(write)
        with self._lock:
            if error is not None and self._broken is None:
                self._broken = f"audit store {self.path} failed: {error}"
            self._committing = False
            self._idle.notify()
            if self._group.items or self._closed:
                self._wake.notify()  # emitters queued meanwhile: the writer's
            broken = self._broken
        if error is not None:
            raise AuditUnavailable(broken or error)
        if refused:
            raise AuditUnavailable(refused[0])
        return last[0]

    def _commit_group(self, group: list[Ticket]) -> str | None:
        return self._transact(lambda: self._write(group))

    def _transact(self, write: Callable[[], None]) -> str | None:
        """Run ``write`` (one transaction on the writer's connection, the commit slot held):
        retried while another process holds the lock; any failure is returned, rolled back."""
        for attempt in range(_BUSY_RETRIES):
            try:
                write()
                self._checkpointer.committed(self._con)
                return None
            except sqlite3.OperationalError as err:
                if self._con.in_transaction:
                    self._con.rollback()
                if "locked" not in str(err) and "busy" not in str(err):
                    return str(err)
                time.sleep(min(0.05 * (attempt + 1), 0.5))
            except sqlite3.Error as err:
                if self._con.in_transaction:
                    self._con.rollback()
                return str(err)
            except Exception as err:  # a bug must fail closed, never leave emitters hanging
                if self._con.in_transaction:
                    self._con.rollback()
                return f"internal error: {err!r}"
        return "database stayed locked by another writer"

    def _write(self, group: list[Ticket]) -> None:
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        heads: dict[str, list[Any]] = {}
        rows: list[tuple[Any, ...]] = []
        for t in group:
            t.error = None
            head = heads.get(t.sandbox)
            if head is None:
                r = con.execute(
                    "SELECT last_seq, last_hash, closed_us FROM chains WHERE sandbox=?",
                    (t.sandbox,),
                ).fetchone()
                # [last seq, last hash, closed, registered in chains]
                head = heads[t.sandbox] = (
                    [r[0], r[1], r[2] is not None, True] if r else [0, GENESIS, False, False]
                )
            if head[2]:
                t.error = f"audit trail of sandbox {t.sandbox} is closed"
                continue
            if t.kind != "open" and not head[3]:
                t.error = f"audit trail of sandbox {t.sandbox} was never opened"
                continue
            if t.kind == "open":
                if not head[3]:
                    con.execute(
                        "INSERT INTO chains(sandbox, actor, opened_us, last_seq, "
                        "last_hash) VALUES(?,?,?,0,?)",
                        (t.sandbox, t.actor, t.ts, GENESIS),
                    )
                    head[3] = True
                continue
            seq = head[0] + 1
            rows.append(chained(t.sandbox, t.actor, seq, t.ts, t.type, t.data, head[1]))
            h = rows[-1][7]
            head[0], head[1] = seq, h
            t.seq = seq
            if t.kind == "close":
                insert_events(con, rows)
                rows.clear()
                self._close_chain(t, seq, h)
                head[2] = True
                t.result = h  # the closing hash, returned by Trail.close
        if rows:
            insert_events(con, rows)
        con.executemany(
            "UPDATE chains SET last_seq=?, last_hash=? WHERE sandbox=?",
            [(h[0], h[1], sb) for sb, h in heads.items() if h[3]],
        )
        con.execute("COMMIT")

    def _close_chain(self, t: Ticket, seq: int, h: str) -> None:
        con = self._con
        r = con.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        lseq, lprev = (r[0] + 1, r[1]) if r else (1, GENESIS)
        lh = event_hash(ledger_body(lseq, t.ts, t.sandbox, seq, h, lprev))
        con.execute(
            "INSERT INTO ledger VALUES(?,?,?,?,?,?,?)", (lseq, t.ts, t.sandbox, seq, h, lprev, lh)
        )
        con.execute(
            "UPDATE chains SET closed_us=?, status=?, ledger_seq=? WHERE sandbox=?",
            (t.ts, json.loads(t.data)["status"], lseq, t.sandbox),
        )

    # -- reading (see corral.audit.query for the user-facing queries) ------------------------------

    def reader(self) -> sqlite3.Connection:
        """A separate read connection (the writer's is owned by its thread)."""
        return connect(self.path, self.synchronous)
