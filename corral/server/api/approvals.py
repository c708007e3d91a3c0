"""Approvals held on the server: a run asks (its sandbox token) and waits; a human with the
right role decides.

Invariants: the decision routes need ``APPROVAL_DECIDE`` (a team admin or owner, with a
step-up for a user's token), which a sandbox token never has (``authz.decide``): a run cannot
approve its own calls. A decision is made once (a second one is a 409) and recorded as an
admin event; a request of a run that has ended cannot be decided. A waiting poll holds no
database connection between its checks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from corral.server.admin_log import record
from corral.server.api import resolve
from corral.server.api.deps import Access, get_db, require
from corral.server.api.schemas import ApprovalIn, DecisionIn
from corral.server.authz import Permission
from corral.server.errors import ApiError
from corral.server.models import Approval, Run, utcnow

__all__ = ["decide_request", "router"]

router = APIRouter(tags=["approvals"])
ApprovalId = Path(pattern=r"^[0-9a-f]{32}$")
POLL_S = 0.25


def approval_json(a: Approval) -> dict[str, Any]:
    return {"id": a.id, "run": a.run_id, "tool": a.tool, "args": a.args, "rule": a.rule,
            "status": a.status, "requested_at": a.requested_at.isoformat(),
            "decided_by": a.decided_by,
            "decided_at": a.decided_at.isoformat() if a.decided_at else None,
            "reason": a.reason}


@router.post("/runs/{run}/approvals", status_code=201)
def request_approval(body: ApprovalIn,
                     access: Access = require(Permission.RUN_REPORT, resolve.run)
                     ) -> dict[str, Any]:
    if access.resource.status != "running":
        raise ApiError(409, "run_ended", f"run {access.resource.id} has ended")
    row = Approval(id=uuid.uuid4().hex, run_id=access.resource.id, tool=body.tool,
                   args=body.args, rule=body.rule)
    access.session.add(row)
    access.session.commit()
    return approval_json(row)


def _load(request: Request, run_id: str, approval: str) -> dict[str, Any] | None:
    with get_db(request).session() as session:
        row = session.get(Approval, approval)
        return approval_json(row) if row is not None and row.run_id == run_id else None


@router.get("/runs/{run}/approvals/{approval}")
async def wait_decision(request: Request, approval: str = ApprovalId,
                        wait: float = Query(0, ge=0, le=60),
                        access: Access = require(Permission.RUN_REPORT, resolve.run)
                        ) -> dict[str, Any]:
    """The request; with ``wait``, answer as soon as it is decided (or when ``wait`` ends)."""
    run_id = access.resource.id
    access.session.close()  # hold no connection while waiting
    deadline = time.monotonic() + wait
    while True:
        found = await run_in_threadpool(_load, request, run_id, approval)
        if found is None:
            raise ApiError(404, "not_found", "no such resource")
        if found["status"] != "pending" or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(POLL_S)


@router.get("/projects/{project}/approvals")
def list_approvals(all_: bool = Query(False, alias="all"),
                   access: Access = require(Permission.RUN_READ, resolve.project)
                   ) -> dict[str, Any]:
    query = select(Approval, Run.human).join(Run, Run.id == Approval.run_id).where(
        Run.project_id == access.resource.id).order_by(Approval.requested_at).limit(1000)
    if not all_:
        query = query.where(Approval.status == "pending")
    return {"approvals": [{**approval_json(a), "human": h}
                          for a, h in access.session.execute(query)]}


def decide_request(access: Access, approval: str, decision: str,
                   reason: str | None) -> dict[str, Any]:
    session, project = access.session, access.resource
    row = session.get(Approval, approval)
    run = session.get(Run, row.run_id) if row is not None else None
    if row is None or run is None or run.project_id != project.id:
        raise ApiError(404, "not_found", "no such resource")
    if row.status != "pending":
        raise ApiError(409, "decided", f"approval {row.id} is already {row.status}")
    if run.status != "running":
        raise ApiError(409, "run_ended", f"run {run.id} has ended")
    row.status, row.decided_by, row.decided_at = decision, access.principal.actor, utcnow()
    row.reason = reason
    record(session, access.principal.actor, "approval.decide", f"{project.name}/{row.id}",
           team_id=project.team_id, run=run.id, tool=row.tool, decision=decision, reason=reason)
    session.commit()
    return approval_json(row)


@router.post("/projects/{project}/approvals/{approval}/approve")
def approve(body: DecisionIn, approval: str = ApprovalId,
            access: Access = require(Permission.APPROVAL_DECIDE, resolve.project)
            ) -> dict[str, Any]:
    return decide_request(access, approval, "approved", body.reason)


@router.post("/projects/{project}/approvals/{approval}/deny")
def deny(body: DecisionIn, approval: str = ApprovalId,
         access: Access = require(Permission.APPROVAL_DECIDE, resolve.project)
         ) -> dict[str, Any]:
    return decide_request(access, approval, "denied", body.reason)
