"""Runs: register (by a member of the project's team), heartbeat and end (by the run's own
sandbox token), kill (by a team admin), list and show."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from corral.server import runs
from corral.server.api import resolve
from corral.server.api.deps import Access, require
from corral.server.api.schemas import EndIn, KillIn, RunIn
from corral.server.authz import Permission
from corral.server.errors import ApiError
from corral.server.models import Agent, Project, Run
from corral.server.tokens import SANDBOX_TTL

__all__ = ["router"]

router = APIRouter(tags=["runs"])


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
                                command=body.command)
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
def end(body: EndIn, access: Access = require(Permission.RUN_REPORT, resolve.run)
        ) -> dict[str, Any]:
    run = access.resource
    answer = runs.end(access.session, run, _project(access, run), actor=access.principal.actor,
                      exit_status=body.exit_status, reason=body.reason)
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
