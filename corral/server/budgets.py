"""The server's budget ledger: reserve a metered request's worst case against every budget that
applies to its run (org, its team, its project, its agent, the run itself), renew it while the
response streams, settle it to the metered cost. The same ``Ledger`` protocol as
``corral.spend.LocalLedger``, on the database, so budgets hold across launchers and replicas.

Invariants:
- ``reserve`` is one transaction that first takes the write lock on what it checks: on SQLite
  its first statement is a write (the database's single write lock, so no other transaction
  commits between its sums and its insert), on PostgreSQL it locks the applicable budget rows
  (``SELECT ... FOR UPDATE`` in id order, so two reservers never deadlock). For every budget,
  settled spend plus live reservations plus the new amount never exceeds its amount:
  concurrent reservations, from any number of processes, can never overshoot.
- A spend row counts in the window of its ``at`` (the reservation time); ``run`` budgets and
  any budget with period ``run`` count only the rows of that run.
- ``extra`` budgets (a run's policy ``budgets:``, which the relay keeps for ``platform`` rules)
  count only the rows of that run, in their window, exactly as the launcher's proxy keeps them
  for one run; checked in the same locked transaction (PostgreSQL: the run's row is locked).
- A reservation not renewed within ``ttl`` (its launcher or this server went away) expires: it
  is charged in full (fail closed on money; the request may have been served), flagged, and
  no longer held open; a late ``settle`` corrects the charge once. Nothing stays reserved
  forever.
- ``settle`` is one statement and idempotent: only the first settle of a row counts.
- Amounts are integer micro-dollars.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from corral.server.db import Database
from corral.server.models import Agent, Budget, Project, Run, SpendRow, Team, utcnow
from corral.spend import Budget as SpendBudget
from corral.spend import Period, Refusal, Reservation, window_of

__all__ = ["DEFAULT_TTL", "DbLedger", "budget_label", "expire", "renew", "reserve", "settle",
           "team_of", "usage_fields", "window_spend"]

DEFAULT_TTL = 120.0  # seconds without a renew before a reservation is charged and dropped
_EXPIRE_EVERY = 1.0

_locks: weakref.WeakKeyDictionary[Database, threading.Lock] = weakref.WeakKeyDictionary()
_next_expiry: weakref.WeakKeyDictionary[Database, float] = weakref.WeakKeyDictionary()
_guard = threading.Lock()


def _writer(db: Database) -> AbstractContextManager[object]:
    """On SQLite, one writer of this process at a time (its busy handler is not fair: many
    threads polling for the lock starve some past the timeout); PostgreSQL locks rows."""
    if db.backend != "sqlite":
        return nullcontext()
    with _guard:
        return _locks.setdefault(db, threading.Lock())


def budget_label(session: Session, row: Budget) -> str:
    """What a refusal names: ``project demo``, ``team ml``, ``agent demo/bot``, ``org``."""
    if row.scope == "org":
        return "org budget"
    if row.scope == "team":
        team = session.get(Team, row.team_id)
        return f"team {team.name if team else row.team_id} budget"
    if row.scope == "project":
        project = session.get(Project, row.project_id)
        return f"project {project.name if project else row.project_id} budget"
    if row.scope == "agent":
        agent = session.get(Agent, row.agent_id)
        project = session.get(Project, agent.project_id) if agent else None
        name = f"{project.name}/{agent.name}" if agent and project else str(row.agent_id)
        return f"agent {name} budget"
    return f"run {row.run_id} budget"


def _applies(run: _Scope, team_id: int) -> ColumnElement[bool]:
    clauses = [Budget.scope == "org",
               and_(Budget.scope == "team", Budget.team_id == team_id),
               and_(Budget.scope == "project", Budget.project_id == run.project_id),
               and_(Budget.scope == "run", Budget.run_id == run.id)]
    if run.agent_id is not None:
        clauses.append(and_(Budget.scope == "agent", Budget.agent_id == run.agent_id))
    return or_(*clauses)


def _rows_of(row: Budget, run: _Scope) -> ColumnElement[bool]:
    """The spend rows a budget counts (before its window)."""
    if row.scope == "org":
        scope: ColumnElement[bool] = SpendRow.id.is_not(None)
    elif row.scope == "team":
        scope = SpendRow.project_id.in_(select(Project.id).where(Project.team_id == row.team_id))
    elif row.scope == "project":
        scope = SpendRow.project_id == row.project_id
    elif row.scope == "agent":
        scope = SpendRow.agent_id == row.agent_id
    else:
        scope = SpendRow.run_id == row.run_id
    if row.period == "run":
        scope = and_(scope, SpendRow.run_id == run.id)
    return scope


_SETTLED = func.coalesce(func.sum(case((SpendRow.state == "settled", SpendRow.cost_micro_usd),
                                       else_=0)), 0)
_HELD = func.coalesce(func.sum(case((SpendRow.state == "reserved", SpendRow.reserved_micro_usd),
                                    else_=0)), 0)


def _sums(session: Session, row: Budget, run: _Scope, now: dt.datetime
          ) -> tuple[int, int, dt.datetime | None]:
    """(settled, reserved, window end) for ``row`` as it applies to ``run``."""
    period: Period = row.period  # type: ignore[assignment]
    start, end = window_of(period, now)
    where = _rows_of(row, run)
    if start is not None and end is not None:
        where = and_(where, SpendRow.at >= start, SpendRow.at < end)
    got = session.execute(select(_SETTLED, _HELD).where(where)).one()
    return int(got[0]), int(got[1]), end


def _lock(session: Session, db: Database, run: _Scope, team_id: int) -> list[Budget]:
    """Take the write lock this reservation's check needs; the applicable budget rows."""
    if db.backend == "sqlite":
        # A write first: this transaction holds SQLite's write lock from here to its commit.
        session.execute(update(Budget).where(_applies(run, team_id))
                        .values(amount_micro_usd=Budget.amount_micro_usd))
        return list(session.scalars(select(Budget).where(_applies(run, team_id))
                                    .order_by(Budget.id)))
    return list(session.scalars(select(Budget).where(_applies(run, team_id))
                                .order_by(Budget.id).with_for_update()))


def expire(db: Database, *, ttl: float = DEFAULT_TTL, now: dt.datetime | None = None,
           session: Session | None = None) -> int:
    """Charge in full and flag every reservation not renewed within ``ttl``; how many."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=ttl)
    with _session(db, session) as session, _writer(db), _committed(session):
        result = session.execute(
            update(SpendRow).where(SpendRow.state == "reserved", SpendRow.renewed_at < cutoff)
            .values(state="settled", cost_micro_usd=SpendRow.reserved_micro_usd,
                    expired_at=now, flagged=True)
            .execution_options(synchronize_session=False))
        return int(getattr(result, "rowcount", 0) or 0)


def _maybe_expire(db: Database, ttl: float, now: dt.datetime, session: Session) -> None:
    # At most once a second per process: per reservation, the scan would cost more than the
    # reservation itself, and an expiry a second late changes nothing.
    clock = time.monotonic()
    with _guard:
        if _next_expiry.get(db, 0.0) > clock:
            return
        _next_expiry[db] = clock + _EXPIRE_EVERY
    expire(db, ttl=ttl, now=now, session=session)


@contextmanager
def _committed(session: Session) -> Iterator[None]:
    session.rollback()  # a write starts the transaction (SQLite: no stale read snapshot)
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


class _Scope(NamedTuple):
    id: str
    project_id: int
    agent_id: int | None


@contextmanager
def _session(db: Database, session: Session | None) -> Iterator[Session]:
    """The caller's session (a request's: one connection per request), else a new one."""
    if session is not None:
        yield session
        return
    with db.sessions() as own:
        yield own


def reserve(db: Database, run_id: str, amount: int, *, provider: str = "", model: str = "",
            ttl: float = DEFAULT_TTL, now: dt.datetime | None = None,
            session: Session | None = None,
            extra: Sequence[SpendBudget] = ()) -> Reservation | Refusal:
    """Book ``amount`` against every budget of the run's scopes and ``extra`` (budgets of this
    run only), or refuse naming the first budget it would overshoot. Commits (or rolls back)
    ``session``'s transaction."""
    if amount < 0:
        raise ValueError("a reservation is never negative")
    now = now or utcnow()
    with _session(db, session) as s:
        found = s.execute(select(Run.id, Run.project_id, Run.agent_id, Project.team_id).join(
            Project, Project.id == Run.project_id).where(Run.id == run_id)).one_or_none()
        s.rollback()  # end the read: the reserving transaction starts by locking
        if found is None:
            raise LookupError(run_id)
        _maybe_expire(db, ttl, now, s)
        run, team_id = _Scope(found[0], found[1], found[2]), int(found[3])
        with _writer(db):
            try:
                for row in _lock(s, db, run, team_id):
                    spent, held, end = _sums(s, row, run, now)
                    if spent + held + amount > row.amount_micro_usd:
                        budget = SpendBudget(row.amount_micro_usd,
                                             row.period,  # type: ignore[arg-type]
                                             budget_label(s, row))
                        s.rollback()
                        return Refusal(budget, spent, held, amount, end)
                refused = _check_extra(s, db, run.id, extra, amount, now)
                if refused is not None:
                    s.rollback()
                    return refused
                spend = SpendRow(run_id=run.id, project_id=run.project_id,
                                 agent_id=run.agent_id, provider=provider[:32],
                                 model=model[:200], reserved_micro_usd=amount,
                                 state="reserved", at=now, renewed_at=now)
                s.add(spend)
                s.flush()
                reservation = Reservation(spend.id, amount, ())
                s.commit()
                return reservation
            except BaseException:
                s.rollback()
                raise


def _check_extra(s: Session, db: Database, run_id: str, extra: Sequence[SpendBudget],
                 amount: int, now: dt.datetime) -> Refusal | None:
    """The first of ``extra`` (this run's own rows only) that ``amount`` would overshoot."""
    if not extra:
        return None
    if db.backend != "sqlite":  # SQLite: ``_lock`` already holds the database's write lock
        s.execute(select(Run.id).where(Run.id == run_id).with_for_update())
    for budget in extra:
        start, end = window_of(budget.period, now)
        where = SpendRow.run_id == run_id
        if start is not None and end is not None:
            where = and_(where, SpendRow.at >= start, SpendRow.at < end)
        got = s.execute(select(_SETTLED, _HELD).where(where)).one()
        spent, held = int(got[0]), int(got[1])
        if spent + held + amount > budget.amount:
            return Refusal(budget, spent, held, amount, end)
    return None


def renew(db: Database, run_id: str, reservation_id: int, *,
          now: dt.datetime | None = None, session: Session | None = None) -> bool:
    """False once the reservation has expired or settled (the caller stops renewing)."""
    with _session(db, session) as session, _writer(db), _committed(session):
        result = session.execute(
            update(SpendRow).where(SpendRow.id == reservation_id, SpendRow.run_id == run_id,
                                   SpendRow.state == "reserved")
            .values(renewed_at=now or utcnow()).execution_options(synchronize_session=False))
        return bool(getattr(result, "rowcount", 0))


def settle(db: Database, run_id: str, reservation_id: int, actual: int, *,
           usage: Mapping[str, Any] | None = None, now: dt.datetime | None = None,
           session: Session | None = None) -> bool:
    """Charge ``actual`` (and record the usage) once; False when already settled."""
    if actual < 0:
        raise ValueError("a charge is never negative")
    values: dict[str, Any] = {"state": "settled", "cost_micro_usd": actual,
                              "settled_at": now or utcnow()}
    for key in ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens"):
        if usage and key in usage:
            values[key] = int(usage[key])
    if usage:
        if usage.get("model"):
            values["model"] = str(usage["model"])[:200]
        if usage.get("provider"):
            values["provider"] = str(usage["provider"])[:32]
        if usage.get("priced_as"):
            values["priced_as"] = str(usage["priced_as"])[:200]
        values["flagged"] = bool(usage.get("flagged", False))
    with _session(db, session) as session, _writer(db), _committed(session):
        result = session.execute(
            update(SpendRow).where(SpendRow.id == reservation_id, SpendRow.run_id == run_id,
                                   SpendRow.settled_at.is_(None))
            .values(**values).execution_options(synchronize_session=False))
        return bool(getattr(result, "rowcount", 0))


class DbLedger:
    """``corral.spend.Ledger`` for one run on the server's database (the server's relay, tests).

    The database's budgets of the run's scopes apply, and the ``budgets`` a caller passes (the
    run's policy ``budgets:``) over the run's own spend."""

    def __init__(self, db: Database, run_id: str, *, ttl: float = DEFAULT_TTL) -> None:
        self.db, self.run_id, self.ttl = db, run_id, ttl

    def reserve(self, budgets: Sequence[SpendBudget], amount: int) -> Reservation | Refusal:
        return reserve(self.db, self.run_id, amount, ttl=self.ttl, extra=budgets)

    def renew(self, reservation: Reservation) -> bool:
        return renew(self.db, self.run_id, reservation.id)

    def settle(self, reservation: Reservation, actual: int, usage: Any = None) -> None:
        settle(self.db, self.run_id, reservation.id, actual, usage=usage_fields(usage))

    def expire(self) -> int:
        return expire(self.db, ttl=self.ttl)


def window_spend(session: Session, row: Budget, now: dt.datetime) -> tuple[int, int] | None:
    """(settled, reserved) in the budget's current window; None for a per-run period (it has
    one window per run)."""
    if row.period == "run" and row.scope != "run":
        return None
    period: Period = row.period  # type: ignore[assignment]
    start, end = window_of(period, now)
    fake = _Scope(row.run_id or "", 0, None)
    where = _rows_of(row, fake)
    if start is not None and end is not None:
        where = and_(where, SpendRow.at >= start, SpendRow.at < end)
    got = session.execute(select(_SETTLED, _HELD).where(where)).one()
    return int(got[0]), int(got[1])


def team_of(session: Session, row: Budget) -> int | None:
    """The team that owns a budget (None: the org's)."""
    if row.scope == "team":
        return row.team_id
    if row.scope == "project":
        return session.scalar(select(Project.team_id).where(Project.id == row.project_id))
    if row.scope == "agent":
        return session.scalar(select(Project.team_id).join(Agent, Agent.project_id == Project.id)
                              .where(Agent.id == row.agent_id))
    if row.scope == "run":
        return session.scalar(select(Project.team_id).join(Run, Run.project_id == Project.id)
                              .where(Run.id == row.run_id))
    return None


def usage_fields(record: Any) -> dict[str, Any] | None:
    """A ``corral.spend.UsageRecord`` as ``settle``'s ``usage`` (None: none given)."""
    if record is None:
        return None
    tokens = record.tokens
    return {"model": record.model, "provider": str(record.api).partition(".")[0],
            "input_tokens": tokens.input, "output_tokens": tokens.output,
            "cache_write_tokens": tokens.cache_write, "cache_read_tokens": tokens.cache_read,
            "flagged": record.flagged,
            "priced_as": None if record.known_model else "unknown model: provider's dearest"}
