"""Approvals: the queue of held calls (full arguments, the rule, who and which agent asked),
decided here (approve once, approve always, deny); the queue is pushed to the page over SSE
when it changes. The "approve always" decisions in force are listed below it, each revocable.

Invariants: a decision goes through the API's own ``decide_request`` (once, recorded, a run
that ended cannot be decided) after ``APPROVAL_DECIDE`` on the run's team, which needs a team
admin with a fresh web session (step-up): the held call's long-poll then returns with it. The
queue and the standing approvals show only the viewer's teams; revoking one needs what
deciding needs (the API's own ``revoke_standing``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, Form, Path, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from corral.server.api.approvals import decide_request, revoke_standing
from corral.server.api.deps import Access, get_db, user_principal
from corral.server.authz import Permission, Principal, decide, visible_teams
from corral.server.errors import ApiError
from corral.server.models import Agent, Approval, Project, Run, StandingApproval, User
from corral.server.web.pages import env
from corral.server.web.ui import Viewer, make_router, not_found, page, partial, viewer
from corral.server.web.views.runs import sse

__all__ = ["pending", "router"]

router = make_router()
QUEUE_POLL_S = 1.0
QUEUE_LIFE_S = 300.0


def _decider(principal: Principal, team_id: int) -> bool:
    """Whether to show the buttons: the decision function itself, asked as if the step-up
    were done (the page asks for a fresh sign-in first; the POST is decided for real)."""
    try:
        decide(dataclasses.replace(principal, step_up=True), Permission.APPROVAL_DECIDE,
               team_id=team_id)
    except ApiError:
        return False
    return True


def pending(session: Session, principal: Principal, limit: int = 200) -> list[dict[str, Any]]:
    query = select(Approval, Run, Project, Agent.name)\
        .join(Run, Run.id == Approval.run_id).join(Project, Project.id == Run.project_id)\
        .outerjoin(Agent, Agent.id == Run.agent_id).where(Approval.status == "pending")\
        .order_by(Approval.requested_at).limit(limit)
    visible = visible_teams(principal)
    if visible is not None:
        query = query.where(Project.team_id.in_(visible))
    return [{"a": a, "run": r, "project": p, "agent": ag,
             "args": json.dumps(a.args, indent=2, ensure_ascii=False, sort_keys=True),
             "can_decide": _decider(principal, p.team_id)}
            for a, r, p, ag in session.execute(query)]


def _recent(v: Viewer) -> list[Any]:
    query = select(Approval, Project.name).join(Run, Run.id == Approval.run_id)\
        .join(Project, Project.id == Run.project_id).where(Approval.status != "pending")\
        .order_by(Approval.decided_at.desc()).limit(20)
    visible = v.teams()
    if visible is not None:
        query = query.where(Project.team_id.in_(visible))
    return list(v.session.execute(query))


def _standing(v: Viewer) -> list[Any]:
    query = select(StandingApproval, Project, Agent.name)\
        .join(Project, Project.id == StandingApproval.project_id)\
        .outerjoin(Agent, Agent.id == StandingApproval.agent_id)\
        .order_by(StandingApproval.created_at.desc()).limit(200)
    visible = v.teams()
    if visible is not None:
        query = query.where(Project.team_id.in_(visible))
    return [{"s": s, "project": p, "agent": agent,
             "can_revoke": _decider(v.principal, p.team_id)}
            for s, p, agent in v.session.execute(query)]


@router.get("/approvals", response_class=HTMLResponse)
def approvals(v: Viewer = Depends(viewer)) -> HTMLResponse:
    return page(v, "ui/approvals.html", "approvals", items=pending(v.session, v.principal),
                recent=_recent(v), standing=_standing(v))


@router.post("/approvals/standing/{ident}/revoke", response_class=HTMLResponse)
def revoke(ident: int = Path(ge=1, le=2**62), v: Viewer = Depends(viewer)) -> HTMLResponse:
    row = v.session.get(StandingApproval, ident)
    project = v.session.get(Project, row.project_id) if row is not None else None
    if row is None or project is None:
        raise not_found()
    v.allow(Permission.RUN_READ, project.team_id)
    v.allow_change(Permission.APPROVAL_DECIDE, project.team_id)
    gone = revoke_standing(Access(v.principal, v.session, project), ident)
    return partial("ui/_notice.html", kind="ok", text=f"{gone['tool']}: the standing approval "
                   "is revoked; the next identical call is held for a decision")


def _decide(v: Viewer, ident: str, decision: str, reason: str,
            always: bool = False) -> HTMLResponse:
    row = v.session.get(Approval, ident)
    run = v.session.get(Run, row.run_id) if row is not None else None
    project = v.session.get(Project, run.project_id) if run is not None else None
    if row is None or project is None:
        raise not_found()
    v.allow(Permission.RUN_READ, project.team_id)
    v.allow_change(Permission.APPROVAL_DECIDE, project.team_id)
    try:
        decide_request(Access(v.principal, v.session, project), ident, decision,
                       reason.strip() or None, always)
    except ApiError as err:
        v.session.rollback()
        return partial("ui/_notice.html", kind="error", text=err.message, status=409)
    verb = "denied" if decision != "approved" else \
        "approved always (later identical calls too)" if always else "approved once"
    return partial("ui/_notice.html", kind="ok", text=f"{row.tool}: {verb}; the held call "
                   "has its answer")


Ident = Path(pattern=r"^[0-9a-f]{32}$")


@router.post("/approvals/{ident}/approve", response_class=HTMLResponse)
def approve(ident: str = Ident, reason: str = Form("", max_length=500),
            v: Viewer = Depends(viewer)) -> HTMLResponse:
    return _decide(v, ident, "approved", reason)


@router.post("/approvals/{ident}/approve-always", response_class=HTMLResponse)
def approve_always(ident: str = Ident, reason: str = Form("", max_length=500),
                   v: Viewer = Depends(viewer)) -> HTMLResponse:
    return _decide(v, ident, "approved", reason, always=True)


@router.post("/approvals/{ident}/deny", response_class=HTMLResponse)
def deny(ident: str = Ident, reason: str = Form("", max_length=500),
         v: Viewer = Depends(viewer)) -> HTMLResponse:
    return _decide(v, ident, "denied", reason)


def _queue(request: Request, user_id: int, step_up: bool) -> tuple[str, str]:
    with get_db(request).session() as session:
        user = session.get(User, user_id)
        if user is None or user.disabled:
            return "", ""
        principal = user_principal(session, user, token_id=None, step_up=step_up)
        items = pending(session, principal)
        key = ",".join(i["a"].id for i in items)
        html = env.get_template("ui/_queue.html").render(items=items, step_up=step_up)
        return key, html


@router.get("/approvals/live")
async def live(request: Request, v: Viewer = Depends(viewer)) -> StreamingResponse:
    """Server-sent events: the queue, re-rendered whenever the set of pending calls changes."""
    user_id, step_up = v.current.user.id, v.step_up
    v.session.close()

    async def stream() -> AsyncIterator[str]:
        shown, deadline = None, time.monotonic() + QUEUE_LIFE_S
        yield ": queue\n\n"
        while time.monotonic() < deadline and not await request.is_disconnected():
            key, html = await run_in_threadpool(_queue, request, user_id, step_up)
            if shown is not None and key != shown:
                yield sse("queue", html)
            shown = key
            await asyncio.sleep(QUEUE_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
