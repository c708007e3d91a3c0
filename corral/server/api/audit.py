"""The central audit trail: ingest a run's batches (its sandbox token), its cursor, and a
project's events and verification (team viewers)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from corral.server.admin_log import record_now
from corral.server.api import resolve
from corral.server.api.deps import Access, get_db, require
from corral.server.api.schemas import BatchIn
from corral.server.authz import Permission
from corral.server.ingest import BatchRefused, check, ingest
from corral.server.models import Agent, AuditEvent, Project, Run, User
from corral.server.trail_check import verify_project

__all__ = ["router"]

router = APIRouter(tags=["audit"])


_BATCH_SCHEMA = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": BatchIn.model_json_schema()}}}}


@router.post("/runs/{run}/events", openapi_extra=_BATCH_SCHEMA)
async def ship(request: Request, access: Access = require(Permission.RUN_REPORT, resolve.run)
               ) -> dict[str, Any]:
    """Store a batch of the run's events (``BatchIn``); answers the run's cursor."""
    # Parsed straight from the bytes (pydantic-core): a third of the time of json.loads
    # followed by validation, on the path every event of every run takes.
    try:
        body = BatchIn.model_validate_json(await request.body())
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from None
    return await run_in_threadpool(_store, request, access, body)


def _store(request: Request, access: Access, body: BatchIn) -> dict[str, Any]:
    # End the authentication's read transaction first, so the batch's transaction starts
    # with its write (the run row lock): on SQLite a transaction that read and then writes
    # fails at once ("database is locked") if another process committed in between, where
    # one that starts by writing waits its turn (busy_timeout).
    access.session.commit()
    run = access.resource
    events = body.events
    try:
        problem = check(run, events)  # the CPU-heavy part, outside the writer queue
        with get_db(request).writer():
            answer = ingest(access.session, run, events, checked=True, problem=problem)
            access.session.commit()
    except BatchRefused as err:
        access.session.rollback()
        project = access.session.get(Project, run.project_id)
        record_now(get_db(request), access.principal.actor, "audit.refused", f"run {run.id}",
                   team_id=project.team_id if project else None, code=err.code,
                   message=err.message, first=events[0].seq, last=events[-1].seq,
                   **err.detail)
        raise
    return answer


@router.get("/runs/{run}/events/cursor")
def cursor(access: Access = require(Permission.RUN_REPORT, resolve.run)) -> dict[str, Any]:
    run = access.resource
    return {"run": run.id, "acked": run.events, "head": run.head}


@router.get("/projects/{project}/audit")
def list_events(human: str | None = Query(None, max_length=320),
                agent: str | None = Query(None, max_length=101),
                run: str | None = Query(None, max_length=36),
                type_: str | None = Query(None, alias="type", max_length=64),
                after: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=5000),
                access: Access = require(Permission.RUN_READ, resolve.project)
                ) -> dict[str, Any]:
    """Events of the project's runs, oldest first; page with ``after`` (the last ``id``).
    Each names the human who launched its run (``human``: the email; ``human_subject``: the
    IdP subject, for an SSO user) and the agent."""
    query = select(AuditEvent, Run.human, Run.sandbox, Agent.name, User.idp_subject)\
        .join(Run, Run.id == AuditEvent.run_id).outerjoin(Agent, Agent.id == Run.agent_id)\
        .outerjoin(User, User.email == Run.human)\
        .where(AuditEvent.project_id == access.resource.id, AuditEvent.id > after)\
        .order_by(AuditEvent.id).limit(limit)
    if human is not None:
        query = query.where(Run.human == human)
    if agent is not None:
        query = query.where(Agent.name == agent)
    if run is not None:
        query = query.where(AuditEvent.run_id == run)
    if type_ is not None:
        query = query.where(AuditEvent.type.startswith(type_[:-1], autoescape=True)
                            if type_.endswith("*") else AuditEvent.type == type_)
    out = [{"id": e.id, "run": e.run_id, "sandbox": sandbox, "seq": e.seq, "ts_us": e.ts_us,
            "type": e.type, "human": h, "human_subject": sub, "agent": a,
            "actor": json.loads(e.actor), "data": json.loads(e.data), "hash": e.hash}
           for e, h, sandbox, a, sub in access.session.execute(query)]
    return {"events": out, "next": out[-1]["id"] if len(out) == limit else None}


@router.get("/projects/{project}/audit/verify")
def verify(access: Access = require(Permission.RUN_READ, resolve.project)) -> dict[str, Any]:
    check = verify_project(access.session, access.resource)
    return {"ok": check.ok, "project": access.resource.name, "runs": check.runs,
            "events": check.events, "ledger": {"entries": check.ledger_entries,
                                               "head": check.ledger_head},
            "problems": check.problems, "heads": check.heads}
