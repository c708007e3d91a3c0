"""The server ledger: one chain over the heads of ended runs.

Invariants:
- An entry is ``{count, head, prev, run, v}`` hashed as corral's audit events are
  (``canonical_json`` then ``event_hash``); ``prev`` is the hash of the entry before it
  (``GENESIS`` for the first), so removing, editing or reordering entries breaks a link.
- ``prev`` and ``hash`` are unique columns: two replicas anchoring at once cannot fork the
  chain; the loser's insert fails and it re-reads the head and retries (inside a savepoint,
  so the caller's transaction survives).
- ``verify`` recomputes every entry and returns the run heads it anchors, for the chain check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.audit.events import GENESIS, SCHEMA_VERSION, canonical_json, event_hash
from corral.server.models import LedgerEntry, Run

__all__ = ["LedgerCheck", "anchor", "entry_hash", "verify"]

_RETRIES = 20


def entry_hash(*, run_id: str, count: int, head: str, prev: str) -> str:
    return event_hash(canonical_json({"count": count, "head": head, "prev": prev,
                                      "run": run_id, "v": SCHEMA_VERSION}))


def _last(session: Session) -> str:
    row = session.scalar(select(LedgerEntry.hash).order_by(LedgerEntry.id.desc()).limit(1))
    return row or GENESIS


def anchor(session: Session, run: Run) -> LedgerEntry:
    """Append the run's current head to the ledger (caller commits)."""
    session.flush()  # take the write lock first (SQLite): the head read below is then current
    for _ in range(_RETRIES):
        prev = _last(session)
        entry = LedgerEntry(run_id=run.id, seq=run.events, head=run.head, prev=prev,
                            hash=entry_hash(run_id=run.id, count=run.events, head=run.head,
                                            prev=prev))
        try:
            with session.begin_nested():
                session.add(entry)
            return entry
        except IntegrityError:
            continue  # another replica anchored first: link to its entry instead
    raise RuntimeError("the ledger head kept moving; giving up")


@dataclass
class LedgerCheck:
    entries: int = 0
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)
    anchored: dict[str, tuple[int, str]] = field(default_factory=dict)  # run -> (seq, head)


def verify(session: Session) -> LedgerCheck:
    """Walk the ledger in order; name the first entry that does not link or match its hash."""
    check = LedgerCheck()
    prev = GENESIS
    rows = session.execute(select(LedgerEntry.id, LedgerEntry.run_id, LedgerEntry.seq,
                                  LedgerEntry.head, LedgerEntry.prev, LedgerEntry.hash)
                           .order_by(LedgerEntry.id))
    for _id, run_id, seq, head, lprev, lhash in rows:
        check.entries += 1
        if lprev != prev:
            check.problems.append(f"ledger entry {check.entries}: does not link to the entry "
                                  "before it (entries deleted, inserted or reordered)")
            break
        if entry_hash(run_id=run_id, count=seq, head=head, prev=lprev) != lhash:
            check.problems.append(f"ledger entry {check.entries} edited: its content does "
                                  "not match its hash")
            break
        check.anchored[run_id] = (seq, head)
        prev = lhash
    check.head = prev
    return check
