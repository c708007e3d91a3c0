"""One transaction appending already-encoded events to one chain: the audit relay's commit.

``AuditStore``'s writer commits groups of ``Ticket`` objects, each with its own state, for any
number of chains and for opens and closes. The relay (``corral.audit.relay``) commits, on the
path of every audited proxy request, a few plain events of one chain it has just validated and
encoded; ``append`` is that case alone, with nothing per event but a row tuple (``Trail.append``
runs it under the store's commit slot and its retry and fail-closed rules).

Invariants (the same rules as the writer's ``AuditStore._write``):
- The chain's head (last seq and hash) is read from ``chains`` inside ``BEGIN IMMEDIATE``,
  never taken from memory: another process may have appended since this one last did.
- Each row's hash is ``event_hash(event_body(...))`` over the stored columns, its ``prev`` the
  hash before it; the head is updated in the same transaction, which commits or rolls back
  as a whole.
- A chain that is closed or was never opened gets nothing: ``ChainRefused``, the transaction
  rolled back (a refusal of these events, not a failure of the store).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from corral.audit.db import insert_events
from corral.audit.events import SCHEMA_VERSION, event_body, event_hash

__all__ = ["ChainRefused", "Row", "append", "chained"]

Row = tuple[str, str, int]  # (type, canonical JSON of the validated payload, ts in us)

_HEAD = "SELECT last_seq, last_hash, closed_us FROM chains WHERE sandbox=?"
_UPDATE = "UPDATE chains SET last_seq=?, last_hash=? WHERE sandbox=?"


def chained(sandbox: str, actor: str, seq: int, ts: int, type_: str, data: str,
            prev: str) -> tuple[Any, ...]:
    """The ``events`` row of the event after ``prev`` (its hash at index 7): the one way both
    this and the store's writer chain an event."""
    h = event_hash(event_body(actor=actor, data=data, prev=prev, sandbox=sandbox, seq=seq,
                              ts=ts, type_=type_, v=SCHEMA_VERSION))
    return (sandbox, seq, ts, type_, actor, data, prev, h, SCHEMA_VERSION)


class ChainRefused(Exception):
    """The chain cannot take events (closed, or never opened); nothing was written."""


def append(con: sqlite3.Connection, sandbox: str, actor: str, rows: Sequence[Row]) -> int:
    """Commit ``rows`` in order as the next events of ``sandbox``'s chain; the last seq."""
    con.execute("BEGIN IMMEDIATE")
    head = con.execute(_HEAD, (sandbox,)).fetchone()
    if head is None or head[2] is not None:
        con.execute("ROLLBACK")
        state = "was never opened" if head is None else "is closed"
        raise ChainRefused(f"audit trail of sandbox {sandbox} {state}")
    seq, prev = head[0], head[1]
    out = []
    for type_, data, ts in rows:
        seq += 1
        out.append(chained(sandbox, actor, seq, ts, type_, data, prev))
        prev = out[-1][7]
    insert_events(con, out)
    con.execute(_UPDATE, (seq, prev, sandbox))
    con.execute("COMMIT")
    return int(seq)
