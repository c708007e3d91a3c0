"""Budgets (set by team or org admins with step-up, listed by anyone within their teams), spend
by project, and a run's reserve/renew/settle (its own sandbox token only).

Invariants: a budget change is an admin event committed with the change; one budget per
(scope, target, period), so a set replaces the amount; amounts cross the API in USD and are
stored in micro-dollars; a reservation is answered ``{"refused": ...}`` (not an error status)
so the launcher builds the provider-shaped 429 from it.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Text, func, select
from sqlalchemy.orm import Session

from corral.server import budgets as ledger
from corral.server.admin_log import record
from corral.server.api import resolve
from corral.server.api.deps import Access, get_db, require
from corral.server.authz import Permission, visible_teams
from corral.server.errors import ApiError
from corral.server.models import Agent, Budget, Project, SpendRow, Team, utcnow
from corral.spend import MICRO, Refusal

__all__ = ["router"]

router = APIRouter(tags=["budgets"])

AgentName = Annotated[str, Field(
    pattern=r"^[a-z0-9][a-z0-9._-]{0,49}(/[a-z0-9][a-z0-9._-]{0,49})?$")]
Micro = Annotated[int, Field(ge=0, le=10**15)]
Tokens = Annotated[int, Field(ge=0, le=10**12)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BudgetIn(_In):
    amount_usd: Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)]
    period: Literal["run", "day", "week", "month"]
    agent: AgentName | None = None  # project budgets only: the agent's budget instead


class ReserveIn(_In):
    amount_micro_usd: Micro
    provider: Annotated[str, Field(max_length=32)] = ""
    model: Annotated[str, Field(max_length=200)] = ""


class RenewIn(_In):
    id: Annotated[int, Field(ge=1)]


class SettleIn(_In):
    id: Annotated[int, Field(ge=1)]
    cost_micro_usd: Micro
    provider: Annotated[str, Field(max_length=32)] = ""
    model: Annotated[str, Field(max_length=200)] = ""
    input_tokens: Tokens = 0
    output_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    cache_read_tokens: Tokens = 0
    flagged: bool = False


def _budget_json(session: Session, row: Budget) -> dict[str, Any]:
    target: str | None = None
    if row.scope == "team":
        team = session.get(Team, row.team_id)
        target = team.name if team else None
    elif row.scope == "project":
        project = session.get(Project, row.project_id)
        target = project.name if project else None
    elif row.scope == "agent":
        agent = session.get(Agent, row.agent_id)
        project = session.get(Project, agent.project_id) if agent else None
        target = f"{project.name}/{agent.name}" if agent and project else None
    elif row.scope == "run":
        target = row.run_id
    spent = ledger.window_spend(session, row, utcnow())
    return {"id": row.id, "scope": row.scope, "target": target, "period": row.period,
            "amount_usd": row.amount_micro_usd / MICRO,
            "spent_usd": None if spent is None else spent[0] / MICRO,
            "reserved_usd": None if spent is None else spent[1] / MICRO,
            "created_by": row.created_by, "created_at": row.created_at.isoformat()}


def _set(access: Access, body: BudgetIn, scope: str, target: str, *, owner: int | None,
         **where: Any) -> dict[str, Any]:
    session, actor = access.session, access.principal.actor
    amount = round(body.amount_usd * MICRO)
    row = session.scalar(select(Budget).where(Budget.scope == scope,
                                              Budget.period == body.period,
                                              *(getattr(Budget, k) == v
                                                for k, v in where.items())))
    before = row.amount_micro_usd / MICRO if row is not None else None
    if row is None:
        row = Budget(scope=scope, period=body.period, amount_micro_usd=amount,
                     created_by=actor, **where)
        session.add(row)
    else:
        row.amount_micro_usd, row.created_by, row.created_at = amount, actor, utcnow()
    record(session, actor, "budget.set", f"{scope} {target}".strip(), team_id=owner,
           period=body.period, amount_usd=body.amount_usd, before_usd=before)
    session.commit()
    return _budget_json(session, row)


@router.put("/budgets/org")
def set_org(body: BudgetIn, access: Access = require(Permission.ORG_BUDGET_WRITE)
            ) -> dict[str, Any]:
    if body.agent is not None:
        raise ApiError(422, "invalid", "agent: only a project budget names an agent")
    return _set(access, body, "org", "", owner=None)


@router.put("/teams/{team}/budgets")
def set_team(body: BudgetIn, access: Access = require(Permission.BUDGET_WRITE, resolve.team)
             ) -> dict[str, Any]:
    if body.agent is not None:
        raise ApiError(422, "invalid", "agent: only a project budget names an agent")
    team = access.resource
    return _set(access, body, "team", team.name, owner=team.id, team_id=team.id)


@router.put("/projects/{project}/budgets")
def set_project(body: BudgetIn,
                access: Access = require(Permission.BUDGET_WRITE, resolve.project)
                ) -> dict[str, Any]:
    project = access.resource
    if body.agent is None:
        return _set(access, body, "project", project.name, owner=project.team_id,
                    project_id=project.id)
    agent = access.session.scalar(select(Agent).where(Agent.project_id == project.id,
                                                      Agent.name == body.agent))
    if agent is None:
        raise ApiError(404, "not_found", f"no agent {body.agent} in project {project.name}")
    return _set(access, body, "agent", f"{project.name}/{agent.name}", owner=project.team_id,
                agent_id=agent.id)


@router.put("/runs/{run}/budgets")
def set_run(body: BudgetIn, access: Access = require(Permission.BUDGET_WRITE, resolve.run)
            ) -> dict[str, Any]:
    if body.agent is not None:
        raise ApiError(422, "invalid", "agent: only a project budget names an agent")
    run = access.resource
    project = access.session.get(Project, run.project_id)
    assert project is not None
    return _set(access, body, "run", run.id, owner=project.team_id, run_id=run.id)


@router.get("/budgets")
def list_budgets(access: Access = require(Permission.LIST)) -> dict[str, Any]:
    session, visible = access.session, visible_teams(access.principal)
    rows = list(session.scalars(select(Budget).order_by(Budget.scope, Budget.id)))
    out = []
    for row in rows:
        team = ledger.team_of(session, row)
        if visible is None or row.scope == "org" or team in visible:
            out.append(_budget_json(session, row))
    return {"budgets": out}


@router.get("/projects/{project}/spend")
def project_spend(by: Literal["agent", "model", "day"] = Query("day"),
                  days: int = Query(30, ge=1, le=3660),
                  access: Access = require(Permission.SPEND_READ, resolve.project)
                  ) -> dict[str, Any]:
    project, session = access.resource, access.session
    since = utcnow() - dt.timedelta(days=days)
    cost = func.coalesce(SpendRow.cost_micro_usd, SpendRow.reserved_micro_usd)
    if by == "agent":
        key: Any = func.coalesce(Agent.name, "")
    elif by == "model":
        key = SpendRow.model
    else:
        key = func.substr(func.cast(SpendRow.at, type_=_text()), 1, 10)
    query = (select(key, func.sum(cost), func.count(), func.sum(SpendRow.input_tokens),
                    func.sum(SpendRow.output_tokens))
             .select_from(SpendRow).where(SpendRow.project_id == project.id,
                                          SpendRow.at >= since)
             .group_by(key).order_by(key))
    if by == "agent":
        query = query.outerjoin(Agent, Agent.id == SpendRow.agent_id)
    found = _tuples(session, query)
    rows = [{by: k or None, "cost_usd": int(c or 0) / MICRO, "requests": int(n),
             "input_tokens": int(i or 0), "output_tokens": int(o or 0)}
            for k, c, n, i, o in found]
    return {"project": project.name, "by": by, "since": since.isoformat(), "rows": rows,
            "total_usd": sum(int(f[1] or 0) for f in found) / MICRO}


def _tuples(session: Session, query: Any) -> list[Any]:
    return list(session.execute(query).all())


def _text() -> Text:
    return Text()


def _refused(refusal: Refusal) -> dict[str, Any]:
    b = refusal.budget
    return {"refused": {"label": b.label, "amount_micro_usd": b.amount, "period": b.period,
                        "spent_micro_usd": refusal.spent, "reserved_micro_usd": refusal.reserved,
                        "needed_micro_usd": refusal.needed,
                        "resets": refusal.resets.isoformat() if refusal.resets else None}}


@router.post("/runs/{run}/spend/reserve")
def reserve(body: ReserveIn, request: Request,
        access: Access = require(Permission.RUN_REPORT, resolve.run)
            ) -> dict[str, Any]:
    run_id = access.resource.id
    if access.resource.status != "running":
        raise ApiError(409, "run_ended", f"run {run_id} has ended")
    got = ledger.reserve(get_db(request), run_id, body.amount_micro_usd,
                         provider=body.provider, model=body.model, session=access.session)
    if isinstance(got, Refusal):
        return _refused(got)
    return {"id": got.id, "amount_micro_usd": got.amount, "ttl_s": ledger.DEFAULT_TTL}


@router.post("/runs/{run}/spend/renew")
def renew(body: RenewIn, request: Request,
        access: Access = require(Permission.RUN_REPORT, resolve.run)
          ) -> dict[str, Any]:
    return {"live": ledger.renew(get_db(request), access.resource.id, body.id,
                                 session=access.session)}


@router.post("/runs/{run}/spend/settle")
def settle(body: SettleIn, request: Request,
        access: Access = require(Permission.RUN_REPORT, resolve.run)
           ) -> dict[str, Any]:
    usage = body.model_dump(exclude={"id", "cost_micro_usd"})
    return {"settled": ledger.settle(get_db(request), access.resource.id, body.id,
                                     body.cost_micro_usd, usage=usage, session=access.session)}
