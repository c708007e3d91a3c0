"""Runs: register (by a member of the project's team), heartbeat and end (by the run's own
sandbox token; the end may carry the run's last events), kill (by a team admin), list and
show, and ``push``: a run's leftover events and end, shipped later by the human who launched
it with their own token (``corral audit push``), for their own runs only.

Invariants: the sandbox token is bound to the run and dies with it, so events that missed it
are shipped only through ``push``, which takes a user's token whose email is the run's human
(a service token: whose ``token:NAME`` is), refuses anyone else (403) and an ended run (409),
and stores through the same ``ingest`` (every hash recomputed, idempotent on (run, seq)).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import Field
from sqlalchemy import select

from corral.server import runs
from corral.server.admin_log import record_now
from corral.server.api import resolve
from corral.server.api.deps import Access, get_db, require
from corral.server.api.schemas import EndIn, EventIn, KillIn, RunIn
from corral.server.authz import Permission, Principal
from corral.server.errors import ApiError
from corral.server.ingest import BatchRefused, ingest
from corral.server.models import Agent, Project, Run
from corral.server.tokens import SANDBOX_TTL

__all__ = ["router"]

router = APIRouter(tags=["runs"])


class EndBatchIn(EndIn):
    # the run's last events, stored before it ends: one round trip at the end of a run
    events: Annotated[list[EventIn], Field(max_length=500)] = Field(default_factory=list)


class PushIn(EndBatchIn):
    end: bool = False  # after storing the events, end the run with exit_status and reason


def _ingest(request: Request, access: Access, events: list[EventIn]) -> None:
    """Store a batch as ``POST /runs/{run}/events`` does; a refusal is recorded and raised
    (nothing stored, the run not ended)."""
    run = access.resource
    try:
        ingest(access.session, run, events)
    except BatchRefused as err:
        access.session.rollback()
        project = access.session.get(Project, run.project_id)
        record_now(get_db(request), access.principal.actor, "audit.refused", f"run {run.id}",
                   team_id=project.team_id if project else None, code=err.code,
                   message=err.message, first=events[0].seq, last=events[-1].seq, **err.detail)
        raise


def _agent_name(access: Access, run: Run) -> str | None:
    agent = access.session.get(Agent, run.agent_id) if run.agent_id else None
    return agent.name if agent else None


def _project(access: Access, run: Run) -> Project:
    project = access.session.get(Project, run.project_id)
    assert project is not None
    return project


@router.post("/projects/{project}/runs", status_code=201)
def register(body: RunIn, access: Access = require(Permission.RUN_START, resolve.project)
             ) -> dict[str, Any]:
    p, project = access.principal, access.resource
    if p.kind == "user" and body.human not in (None, p.actor):
        raise ApiError(422, "invalid", "human: a user's token registers runs as that user")
    human = p.actor if p.kind == "user" else (body.human or p.actor)
    run, secret = runs.register(access.session, project, actor=p.actor, human=human,
                                host=body.host, sandbox=body.sandbox,
                                policy_digest=body.policy_digest, agent=body.agent,
                                command=body.command,
                                subject=p.subject if p.kind == "user" else None)
    access.session.commit()
    return {"run": runs.run_json(run, project.name, body.agent), "token": secret,
            "token_ttl_s": int(SANDBOX_TTL.total_seconds())}


@router.get("/projects/{project}/runs")
def list_runs(all_: bool = Query(False, alias="all"),
              access: Access = require(Permission.RUN_READ, resolve.project)
              ) -> dict[str, Any]:
    query = select(Run, Agent.name).outerjoin(Agent, Agent.id == Run.agent_id).where(
        Run.project_id == access.resource.id).order_by(Run.started_at.desc()).limit(1000)
    if not all_:
        query = query.where(Run.status == "running")
    return {"runs": [runs.run_json(r, access.resource.name, a)
                     for r, a in access.session.execute(query)]}


@router.get("/runs/{run}")
def show_run(access: Access = require(Permission.RUN_READ, resolve.run)) -> dict[str, Any]:
    run = access.resource
    return {"run": runs.run_json(run, _project(access, run).name, _agent_name(access, run))}


@router.post("/runs/{run}/heartbeat")
def heartbeat(access: Access = require(Permission.RUN_REPORT, resolve.run)) -> dict[str, Any]:
    answer = runs.heartbeat(access.session, access.resource, access.principal.token_id)
    access.session.commit()
    return answer


@router.post("/runs/{run}/end")
def end(body: EndBatchIn, request: Request,
        access: Access = require(Permission.RUN_REPORT, resolve.run)) -> dict[str, Any]:
    run = access.resource
    if body.events:
        _ingest(request, access, body.events)
    answer = runs.end(access.session, run, _project(access, run), actor=access.principal.actor,
                      exit_status=body.exit_status, reason=body.reason)
    access.session.commit()
    return answer


def _launched_by(principal: Principal, run: Run) -> bool:
    if principal.kind == "user":
        return principal.email is not None and principal.email == run.human
    return principal.kind == "service" and principal.actor == run.human


@router.post("/runs/{run}/push")
def push(body: PushIn, request: Request,
         access: Access = require(Permission.RUN_START, resolve.run)) -> dict[str, Any]:
    """Leftover events of a run, and its end, from the human who launched it."""
    run, p = access.resource, access.principal
    if not _launched_by(p, run):
        raise ApiError(403, "not_your_run", f"run {run.id} was launched by someone else; only "
                       "the human who launched a run pushes its leftovers")
    if run.status != "running":
        raise ApiError(409, "run_ended", f"run {run.id} has already ended ({run.events} "
                       "events acknowledged)")
    project = _project(access, run)
    if body.events:
        _ingest(request, access, body.events)
    answer: dict[str, Any] = {"run": run.id, "status": run.status}
    if body.end:
        answer.update(runs.end(access.session, run, project, actor=p.actor,
                               exit_status=body.exit_status, reason=body.reason))
    answer["acked"] = run.events
    runs.record_push(access.session, run, project, actor=p.actor, events=len(body.events),
                     ended=body.end)
    access.session.commit()
    return answer


@router.post("/runs/{run}/kill")
def kill(body: KillIn, access: Access = require(Permission.RUN_KILL, resolve.run)
         ) -> dict[str, Any]:
    run = access.resource
    answer = runs.kill(access.session, run, _project(access, run), actor=access.principal.actor,
                       reason=body.reason)
    access.session.commit()
    return answer
