"""Where the audit relay's events go: a store's trail as rows, anything else as tickets.

``corral.audit.relay`` queues each accepted event with ``add`` (a token back), commits what
it queued with ``commit`` and then asks ``seq(token)`` for each ack. Two sinks:

- ``RowSink``: the relay bound to a store's own ``Trail`` (every ``corral run`` without a
  terminal, the benchmark). An event is one row tuple; ``commit`` is one ``Trail.append`` on
  the relay's thread (no ticket, group or event object per event: this runs for every
  audited proxy request).
- ``TicketSink``: anything else with ``emit_held``/``commit`` (the CLI's denial printer,
  tests) or a plain ``emit`` sink: each event goes through its ``emit_held``, so a wrapper
  sees every event.

Invariants:
- Acks follow the commit: ``seq`` of a token is known only after the ``commit`` that held it
  (``RowSink`` refuses to answer before; a ticket waits for its group).
- A failed commit fails every event it held (``AuditUnavailable`` from ``seq``); the store is
  then unavailable for later commits too (its own rule), so the relay fails closed.
- A payload reaching ``add`` has been through ``validate`` (the relay's accept, or
  ``add_checked``); the row's data is its canonical JSON without null fields, as
  ``Trail.emit`` stores it.
"""

from __future__ import annotations

import time
from typing import Any

from corral.audit.append import Row
from corral.audit.events import EventError, canonical_json, validate
from corral.audit.store import AuditUnavailable, Ticket, Trail

__all__ = ["RowSink", "TicketSink", "sink_for"]


class RowSink:
    """Events of one ``Trail`` as rows, committed by ``Trail.append``."""

    def __init__(self, trail: Trail) -> None:
        self.trail = trail
        self.rows: list[Row] = []
        self.last = 0  # seq of the last row of the previous commit
        self.count = 0  # rows in the previous commit
        self.error: str | None = None  # why the previous commit failed

    def add(self, type_: str, data: dict[str, Any]) -> tuple[int, int]:
        """Queue a validated event: (token, size of its payload's JSON)."""
        body = canonical_json({k: v for k, v in data.items() if v is not None})
        self.rows.append((type_, body, time.time_ns() // 1000))
        return len(self.rows), len(body)

    def add_checked(self, type_: str, data: dict[str, Any]) -> int:
        validate(type_, data)
        return self.add(type_, data)[0]

    def commit(self) -> None:
        rows, self.rows = self.rows, []
        self.error, self.count = None, len(rows)
        if not rows:
            return
        try:
            self.last = self.trail.append(rows)
        except AuditUnavailable as err:
            self.error = str(err)

    def seq(self, token: Any) -> int:
        """The committed seq of the ``token``-th event of the last commit."""
        if self.error is not None:
            raise AuditUnavailable(self.error)
        return int(self.last - self.count + token)


class TicketSink:
    """A trail-like wrapper (``emit_held`` + ``commit``): every event through ``emit_held``."""

    def __init__(self, trail: Any) -> None:
        self.trail = trail

    def add(self, type_: str, data: dict[str, Any]) -> tuple[Ticket, int | None]:
        ticket = self.trail.emit_held(type_, **data)
        return ticket, len(getattr(ticket, "data", "")) or None

    def add_checked(self, type_: str, data: dict[str, Any]) -> Ticket:
        return self.add(type_, data)[0]  # emit_held validates

    def commit(self) -> None:
        self.trail.commit()

    def seq(self, token: Any) -> int:
        return int(token.wait())


class _Done:
    """A ticket already settled (the sink emitted synchronously)."""

    done = True

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def wait(self, timeout: float | None = None) -> int:
        return self.seq


class _SinkTrail:
    """A plain sink served like a trail: the sink has the event the moment it returns."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.count = 0

    def emit_held(self, event_type: str, /, **fields: Any) -> _Done:
        try:
            self.sink.emit(event_type, **fields)
        except (EventError, TypeError):
            raise
        except Exception as err:
            raise AuditUnavailable(f"audit sink failed: {err}") from None
        self.count += 1
        return _Done(self.count)

    def commit(self) -> None:
        pass


def sink_for(trail: Any) -> RowSink | TicketSink:
    """A store's own ``Trail`` as rows; a wrapper with ``emit_held`` or any ``emit`` sink as
    tickets (``emit``: the sink has the event once it returns)."""
    if type(trail) is Trail:
        return RowSink(trail)
    return TicketSink(trail if hasattr(trail, "emit_held") else _SinkTrail(trail))
