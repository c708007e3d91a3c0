"""Approvals held on the server: a run asks (its sandbox token) and waits; a human with the
right role decides.

Invariants: the decision routes need ``APPROVAL_DECIDE`` (a team admin or owner, with a
step-up for a user's token), which a sandbox token never has (``authz.decide``): a run cannot
approve its own calls. A decision is made once (a second one is a 409) and recorded as an
admin event; a request of a run that has ended cannot be decided. A waiting poll holds no
database connection between its checks; a decision committed by this process wakes it at once
(``wakeups``), one made on another replica is seen at its next check (``POLL_S``).
- "Approve always" also stores a ``StandingApproval`` keyed by (project, agent, tool, scope,
  the run's policy digest), the scope being the command for ``exec`` and the canonical
  arguments otherwise, computed here (never taken from the launcher). A later request that
  matches one is created already approved, naming the standing approval's author; anything
  that differs (other agent, other policy version, other command) asks again.
- A standing approval is listed to whoever may read the project's runs and revoked (deleted,
  recorded as ``approval.revoke``) by whoever may decide its approvals (``APPROVAL_DECIDE``,
  the same step-up); the next matching call asks again.
- A request repeated while the same call is pending (a client's retry) joins that request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from corral.server.admin_log import record
from corral.server.api import resolve
from corral.server.api.deps import Access, get_db, require
from corral.server.api.schemas import ApprovalIn, DecisionIn
from corral.server.authz import Permission
from corral.server.errors import ApiError
from corral.server.models import Agent, Approval, Run, StandingApproval, utcnow
from corral.server.wakeups import Wakeups

__all__ = ["decide_request", "revoke_standing", "router", "scope_digest", "standing_list"]

router = APIRouter(tags=["approvals"])
ApprovalId = Path(pattern=r"^[0-9a-f]{32}$")
POLL_S = 0.25
DECIDED = Wakeups()


def approval_json(a: Approval) -> dict[str, Any]:
    return {"id": a.id, "run": a.run_id, "tool": a.tool, "args": a.args, "rule": a.rule,
            "status": a.status, "requested_at": a.requested_at.isoformat(),
            "decided_by": a.decided_by,
            "decided_at": a.decided_at.isoformat() if a.decided_at else None,
            "reason": a.reason, "always": bool(a.always), "caller": a.caller}


def _scope(tool: str, args: dict[str, Any]) -> str:
    """What "always" covers: the command for exec, the exact arguments otherwise."""
    if tool == "exec":
        return str(args.get("command"))
    return json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def scope_digest(tool: str, args: dict[str, Any]) -> str:
    return hashlib.sha256(_scope(tool, args).encode()).hexdigest()


def _standing(session: Session, run: Run, tool: str, digest: str) -> StandingApproval | None:
    agent = StandingApproval.agent_id.is_(None) if run.agent_id is None else \
        StandingApproval.agent_id == run.agent_id
    return session.scalars(select(StandingApproval).where(
        StandingApproval.project_id == run.project_id, StandingApproval.tool == tool,
        StandingApproval.scope_digest == digest,
        StandingApproval.policy_digest == run.policy_digest, agent).limit(1)).first()


@router.post("/runs/{run}/approvals", status_code=201)
def request_approval(body: ApprovalIn,
                     access: Access = require(Permission.RUN_REPORT, resolve.run)
                     ) -> dict[str, Any]:
    session, run = access.session, access.resource
    if run.status != "running":
        raise ApiError(409, "run_ended", f"run {run.id} has ended")
    digest = scope_digest(body.tool, body.args)
    for held in session.scalars(select(Approval).where(
            Approval.run_id == run.id, Approval.status == "pending", Approval.tool == body.tool,
            Approval.scope_digest == digest)):
        if held.args == body.args and held.caller == body.caller:
            return approval_json(held)  # a retry of the held call waits on the same request
    row = Approval(id=uuid.uuid4().hex, run_id=run.id, tool=body.tool, args=body.args,
                   rule=body.rule, scope_digest=digest, caller=body.caller)
    standing = _standing(session, run, body.tool, digest)
    if standing is not None:
        row.status, row.decided_at = "approved", utcnow()
        row.decided_by = f"{standing.created_by} (always, from approval {standing.approval_id})"
        row.reason = "a standing approval (approve always)"
        record(session, standing.created_by, "approval.standing", f"run {run.id}/{row.id}",
               run=run.id, tool=row.tool, standing=standing.id, caller=body.caller)
    session.add(row)
    session.commit()
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
    with DECIDED.watch(approval) as decided:
        while True:
            decided.clear()  # before the read: a decision after it still wakes the wait
            found = await run_in_threadpool(_load, request, run_id, approval)
            if found is None:
                raise ApiError(404, "not_found", "no such resource")
            left = deadline - time.monotonic()
            if found["status"] != "pending" or left <= 0:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(decided.wait(), min(POLL_S, left))


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


def decide_request(access: Access, approval: str, decision: str, reason: str | None,
                   always: bool = False) -> dict[str, Any]:
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
    row.always = always and decision == "approved"
    if row.always:
        session.add(StandingApproval(
            project_id=project.id, agent_id=run.agent_id, tool=row.tool,
            scope_digest=row.scope_digest or scope_digest(row.tool, row.args),
            policy_digest=run.policy_digest, summary=_scope(row.tool, row.args)[:500],
            approval_id=row.id, created_by=access.principal.actor))
    record(session, access.principal.actor, "approval.decide", f"{project.name}/{row.id}",
           team_id=project.team_id, run=run.id, tool=row.tool, decision=decision, reason=reason,
           always=row.always, caller=row.caller)
    session.commit()
    DECIDED.notify(row.id)
    return approval_json(row)


@router.post("/projects/{project}/approvals/{approval}/approve")
def approve(body: DecisionIn, approval: str = ApprovalId,
            access: Access = require(Permission.APPROVAL_DECIDE, resolve.project)
            ) -> dict[str, Any]:
    return decide_request(access, approval, "approved", body.reason, body.always)


@router.post("/projects/{project}/approvals/{approval}/deny")
def deny(body: DecisionIn, approval: str = ApprovalId,
         access: Access = require(Permission.APPROVAL_DECIDE, resolve.project)
         ) -> dict[str, Any]:
    return decide_request(access, approval, "denied", body.reason)


def standing_list(session: Session, project_id: int) -> list[dict[str, Any]]:
    rows = session.execute(select(StandingApproval, Agent.name).outerjoin(
        Agent, Agent.id == StandingApproval.agent_id).where(
        StandingApproval.project_id == project_id).order_by(StandingApproval.id))
    return [{"id": s.id, "tool": s.tool, "scope": s.summary, "agent": agent,
             "policy_digest": s.policy_digest, "approval": s.approval_id,
             "created_by": s.created_by, "created_at": s.created_at.isoformat()}
            for s, agent in rows]


def revoke_standing(access: Access, ident: int) -> dict[str, Any]:
    session, project = access.session, access.resource
    row = session.get(StandingApproval, ident)
    if row is None or row.project_id != project.id:
        raise ApiError(404, "not_found", "no such resource")
    gone = next(s for s in standing_list(session, project.id) if s["id"] == ident)
    session.delete(row)
    record(session, access.principal.actor, "approval.revoke", f"{project.name}/always/{ident}",
           team_id=project.team_id, tool=row.tool, scope=row.summary, approval=row.approval_id)
    session.commit()
    return gone


@router.get("/projects/{project}/approvals/standing")
def list_standing(access: Access = require(Permission.RUN_READ, resolve.project)
                  ) -> dict[str, Any]:
    """The project's "approve always" decisions in force."""
    return {"standing": standing_list(access.session, access.resource.id)}


@router.delete("/projects/{project}/approvals/standing/{standing}")
def delete_standing(standing: int = Path(ge=1, le=2**62),
                    access: Access = require(Permission.APPROVAL_DECIDE, resolve.project)
                    ) -> dict[str, Any]:
    """Revoke one: the next identical call is held for a human again."""
    return revoke_standing(access, standing)
