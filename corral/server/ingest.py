"""Audit ingest: a run's events, shipped in batches, checked link by link, stored once.

Invariants:
- A batch is stored whole or not at all, under a lock on its run's row (taken by a write
  before anything is read, on SQLite and PostgreSQL alike), so two copies of a batch sent at
  once cannot both pass the cursor check. What needs no stored state (``check``: hashes,
  forms, links inside the batch) is done before that lock.
- Every event's hash is recomputed with corral's own ``event_body``/``event_hash`` (the run's
  registered sandbox id in the body) and its ``prev`` must be the hash before it: the server
  never trusts a hash it was sent. ``actor`` and ``data`` must be canonical JSON objects, as
  the local store writes them, so what is stored is what was hashed and reads back as JSON:
  ``_canonical_object`` is exactly ``canonical_json(json.loads(text)) == text`` (the stdlib's
  own C scanner and encoder, called without the wrappers; a hypothesis test compares the
  two), and text that does not decode, holds NaN or an out-of-range float, or nests past the
  recursion limit is not canonical (422, never a 500).
- seq runs 1, 2, 3... without a gap. A batch whose seqs are not consecutive, or that starts
  past the cursor + 1, is refused 422 (a forged seq or lost events); events at or below the
  cursor must equal what is stored, content and hash (then they are acknowledged again and
  nothing is added: idempotent on (run, seq)), else 409; a batch that does not link or whose
  content does not match its hashes is refused 409. A refusal changes nothing already stored.
- The answer's ``acked`` is the run's cursor after the batch: every event up to it is
  committed (the transaction committed before the answer is sent).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from corral.audit.events import GENESIS, canonical_json, event_body, event_hash
from corral.server.errors import ApiError
from corral.server.models import AuditEvent, Run

__all__ = ["BatchRefused", "Event", "check", "ingest"]

MAX_BATCH = 500


class BatchRefused(ApiError):
    """A batch refused for its content; ``detail`` goes into the server's admin event."""

    def __init__(self, status: int, code: str, message: str, **detail: Any) -> None:
        super().__init__(status, code, message)
        self.detail = detail


class Event(Protocol):
    """An event as shipped: the API's validated ``EventIn`` is used as it is (copying 500 of
    them into another type cost more than checking their canonical forms)."""

    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def v(self) -> int: ...
    @property
    def prev(self) -> str: ...
    @property
    def hash(self) -> str: ...


# json.loads without its wrappers (the same C scanner): checking 500 events a batch, the
# wrappers were a measurable part of the cost. canonical_json encodes with one prebuilt C
# encoder of its own.
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _canonical_object(text: str) -> bool:
    """``canonical_json(json.loads(text)) == text`` for a JSON object, False for anything else."""
    try:
        # Leading or trailing whitespace is never canonical: scanning from 0 and requiring the
        # end of the text gives json.loads' verdict for every text that could be.
        value, end = _scan(text, 0)
        return end == len(text) and type(value) is dict and canonical_json(value) == text
    except (StopIteration, ValueError, RecursionError):
        return False


_RUNS = cast(Table, Run.__table__)  # Core: no ORM bookkeeping for the two hot statements


def _set_loaded(run: Run, **values: object) -> None:
    """Put what the database holds (or now will) into ``run`` without marking it changed:
    the statements here keep the row current, so the ORM has nothing to flush for it."""
    for name, value in values.items():
        set_committed_value(run, name, value)


def _lock(session: Session, run: Run) -> None:
    """Hold the run's row (PostgreSQL: row lock; SQLite: the database write lock) and read
    its cursor in the same statement: under SQLite's one write lock, every statement more is
    a release of the GIL that other requests' threads take for up to a switch interval."""
    events, head, status = session.execute(
        update(_RUNS).where(_RUNS.c.id == run.id).values(events=_RUNS.c.events)
        .returning(_RUNS.c.events, _RUNS.c.head, _RUNS.c.status)).one()
    _set_loaded(run, events=events, head=head, status=status)


def _prev_and_overlap(session: Session, run: Run, events: Sequence[Event]) -> str:
    """Events at or below the cursor must be exactly the stored ones; returns the hash the
    batch's first event must link to."""
    first = events[0].seq
    if first > run.events:
        return run.head
    stored = dict(session.execute(select(AuditEvent.seq, AuditEvent.hash).where(
        AuditEvent.run_id == run.id, AuditEvent.seq >= first - 1,
        AuditEvent.seq <= min(events[-1].seq, run.events))).all())
    for e in events:
        if e.seq <= run.events and stored.get(e.seq) != e.hash:
            raise BatchRefused(409, "conflict", f"event seq {e.seq} differs from the one "
                               "already acknowledged (a trail is never rewritten)",
                               seq=e.seq, reason="rewrite")
    return GENESIS if first == 1 else stored[first - 1]


def _check_content(run: Run, events: Sequence[Event]) -> BatchRefused | None:
    """What needs no stored state: canonical forms, every hash, the links inside the batch.

    Run before the run's lock is taken (it is most of the CPU a batch costs); the first
    problem is returned, not raised, so a rewrite of acknowledged events is named as such."""
    canonical: set[str] = set()  # a run's actor repeats on every event: check it once
    prev: str | None = None
    for e in events:
        if prev is not None and e.prev != prev:
            return BatchRefused(409, "chain_broken", f"event seq {e.seq} does not link to the "
                                "event before it (prev hash differs)", seq=e.seq,
                                reason="link")
        if e.actor not in canonical:
            if not _canonical_object(e.actor):
                return BatchRefused(422, "invalid", f"event seq {e.seq}: actor and data must "
                                    "be canonical JSON objects", seq=e.seq, reason="form")
            canonical.add(e.actor)
        if not _canonical_object(e.data):
            return BatchRefused(422, "invalid", f"event seq {e.seq}: actor and data must be "
                                "canonical JSON objects", seq=e.seq, reason="form")
        body = event_body(actor=e.actor, data=e.data, prev=e.prev, sandbox=run.sandbox,
                          seq=e.seq, ts=e.ts, type_=e.type, v=e.v)
        if event_hash(body) != e.hash:
            return BatchRefused(409, "chain_broken", f"event seq {e.seq}: its content does "
                                "not match its hash", seq=e.seq, reason="hash")
        prev = e.hash
    return None


_COLUMNS = ("run_id", "project_id", "seq", "ts_us", "type", "actor", "data", "v", "prev", "hash")


def _insert(session: Session, run: Run, events: Sequence[Event]) -> None:
    rows = [(run.id, run.project_id, e.seq, e.ts, e.type, e.actor, e.data, e.v, e.prev, e.hash)
            for e in events]
    if session.get_bind().dialect.name == "postgresql":
        # COPY, in the session's own transaction: on PostgreSQL it is several times quicker
        # than an executemany of INSERTs, and this is the path every event takes.
        driver = session.connection().connection.driver_connection
        with driver.cursor() as cur, cur.copy(  # type: ignore[union-attr]
                f"COPY audit_events ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    # The sqlite3 driver's executemany, in the session's transaction: the ORM's bulk insert
    # spends more on each row's bookkeeping than SQLite spends storing it.
    driver = session.connection().connection.driver_connection
    driver.executemany(  # type: ignore[union-attr]
        f"INSERT INTO audit_events ({', '.join(_COLUMNS)}) VALUES "
        f"({', '.join('?' * len(_COLUMNS))})", rows)


def check(run: Run, events: Sequence[Event]) -> BatchRefused | None:
    """The checks that need no database (call before ``ingest``, outside any lock)."""
    first = events[0].seq
    for i, e in enumerate(events):
        if e.seq != first + i:
            return BatchRefused(422, "bad_seq", f"seq {e.seq} at position {i} of a batch "
                                f"starting at {first}: a batch's seqs are consecutive",
                                seq=e.seq, reason="seq")
    return _check_content(run, events)


def ingest(session: Session, run: Run, events: Sequence[Event], *, checked: bool = False,
           problem: BatchRefused | None = None) -> dict[str, int | str]:
    """Check and store one batch (caller commits); ``BatchRefused`` says why not. With
    ``checked``, ``problem`` is ``check``'s verdict, already taken outside any lock. A problem
    ``check`` found is raised after the stored-state checks, so a rewrite of acknowledged
    events is named as one."""
    if not checked:
        problem = check(run, events)
    first = events[0].seq
    if problem is not None and problem.code == "bad_seq":
        raise problem
    _lock(session, run)
    if run.status != "running":
        raise BatchRefused(409, "run_ended", f"run {run.id} has ended", reason="ended")
    if first > run.events + 1:
        raise BatchRefused(422, "gap", f"the batch starts at seq {first} but the server has "
                           f"events up to seq {run.events}: events {run.events + 1}.."
                           f"{first - 1} are missing", seq=first, reason="gap")
    prev = _prev_and_overlap(session, run, events)
    # Resent events are re-checked too (by ``check``): an acknowledgement vouches for what
    # was sent.
    if problem is not None:
        raise problem
    if events[0].prev != prev:
        raise BatchRefused(409, "chain_broken", f"event seq {first} does not link to the "
                           "event before it (prev hash differs)", seq=first, reason="link")
    new = [e for e in events if e.seq > run.events]
    if new:
        _insert(session, run, new)
        session.execute(update(_RUNS).where(_RUNS.c.id == run.id)
                        .values(events=new[-1].seq, head=new[-1].hash))
        _set_loaded(run, events=new[-1].seq, head=new[-1].hash)
    return {"acked": run.events, "head": run.head, "stored": len(new),
            "duplicates": len(events) - len(new)}
