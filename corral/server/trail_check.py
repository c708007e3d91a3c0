"""Verify the server's copy of a project's trails: every run's chain, and the ledger.

Invariants: a run's chain is re-read in seq order and every hash recomputed from the stored
columns (``event_body``/``event_hash``, the run's sandbox id in the body); it must start at
seq 1 from ``GENESIS``, have no gap, link, and end where the run row says (``events``,
``head``). An ended run's chain must hold, at the seq its ledger entry anchored, exactly the
anchored head. The ledger itself is checked whole (``ledger.verify``). Problems name the run
and the first broken event; a verify never stops at the first broken run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.audit.events import GENESIS, event_body, event_hash
from corral.server import ledger
from corral.server.models import AuditEvent, Project, Run

__all__ = ["TrailCheck", "verify_project", "verify_run"]


@dataclass
class TrailCheck:
    runs: int = 0
    events: int = 0
    ledger_entries: int = 0
    ledger_head: str = GENESIS
    problems: list[str] = field(default_factory=list)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> seq, head, sandbox

    @property
    def ok(self) -> bool:
        return not self.problems


def _chain(session: Session, run: Run, anchored: tuple[int, str] | None,
           check: TrailCheck) -> None:
    prev, seq = GENESIS, 0
    at_anchor: str | None = GENESIS if anchored and anchored[0] == 0 else None
    rows = session.execute(select(AuditEvent.seq, AuditEvent.ts_us, AuditEvent.type,
                                  AuditEvent.actor, AuditEvent.data, AuditEvent.v,
                                  AuditEvent.prev, AuditEvent.hash)
                           .where(AuditEvent.run_id == run.id).order_by(AuditEvent.seq)
                           .execution_options(yield_per=2000))
    for r_seq, ts, type_, actor, data, v, r_prev, r_hash in rows:
        check.events += 1
        name = f"run {run.id}: event seq {r_seq} ({type_})"
        if r_seq != seq + 1:
            check.problems.append(f"{name}: events {seq + 1}..{r_seq - 1} are missing")
            return
        if r_prev != prev:
            check.problems.append(f"{name}: does not link to the event before it")
            return
        body = event_body(actor=actor, data=data, prev=r_prev, sandbox=run.sandbox, seq=r_seq,
                          ts=ts, type_=type_, v=v)
        if event_hash(body) != r_hash:
            check.problems.append(f"{name} edited: its content does not match its hash")
            return
        prev, seq = r_hash, r_seq
        if anchored and anchored[0] == seq:
            at_anchor = prev
    if (seq, prev) != (run.events, run.head):
        check.problems.append(f"run {run.id}: the chain ends at seq {seq}, the run's head "
                              f"records seq {run.events} (events deleted or added)")
    if run.status == "ended" and anchored is None:
        check.problems.append(f"run {run.id}: ended but its head is not in the ledger")
    elif anchored is not None and at_anchor != anchored[1]:
        check.problems.append(f"run {run.id}: the chain differs from the head the ledger "
                              f"anchored at seq {anchored[0]}")
    check.heads[run.id] = {"seq": seq, "head": prev, "sandbox": run.sandbox}


def verify_project(session: Session, project: Project) -> TrailCheck:
    check = TrailCheck()
    led = ledger.verify(session)
    check.ledger_entries, check.ledger_head = led.entries, led.head
    check.problems += led.problems
    for run in session.scalars(select(Run).where(Run.project_id == project.id)
                               .order_by(Run.started_at)):
        check.runs += 1
        _chain(session, run, led.anchored.get(run.id), check)
    return check


def verify_run(session: Session, run: Run) -> TrailCheck:
    """One run's chain, and the ledger it is anchored in (the web UI's run page)."""
    check = TrailCheck()
    led = ledger.verify(session)
    check.ledger_entries, check.ledger_head = led.entries, led.head
    check.problems += led.problems
    check.runs = 1
    _chain(session, run, led.anchored.get(run.id), check)
    return check
