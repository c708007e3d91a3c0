"""Sandboxes: the runs list (filters, keyset pages) and a run's page (its trace timeline, a
live tail over SSE while it runs, the policy it ran under, its chain's verification, kill).

Invariants: every query is bounded (``PAGE`` rows) and served by an index: the list pages by
(started_at, id) from the last row seen, a run's events by the unique (run_id, seq) index
from the last seq seen, so the 1,000th page costs what the first does. The live tail holds no
database connection between its polls and ends when the browser goes or the run ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from corral.server import policies
from corral.server.api.deps import get_db
from corral.server.authz import Permission
from corral.server.models import Agent, AuditEvent, Project, Run, utcnow
from corral.server.runs import kill as kill_run
from corral.server.tokens import SANDBOX_TTL
from corral.server.trail_check import verify_run
from corral.server.web import timeline
from corral.server.web.pages import env
from corral.server.web.ui import Viewer, make_router, not_found, page, partial, viewer

__all__ = ["router"]

router = make_router()
PAGE = 50
EVENTS_PAGE = 200
SILENT = dt.timedelta(minutes=2)
TAIL_POLL_S = 0.5
TAIL_LIFE_S = 300.0  # the browser's EventSource reconnects after this


def status_of(run: Run, now: dt.datetime) -> str:
    if run.status == "running":
        age = now - run.last_heartbeat_at
        return "lost" if age > SANDBOX_TTL else "silent" if age > SILENT else "running"
    return run.status


def _filters(v: Viewer, query: Any, project: str, agent: str, human: str, status: str) -> Any:
    visible = v.teams()
    if visible is not None:
        query = query.where(Project.team_id.in_(visible))
    if project:
        query = query.where(Project.name == project)
    if agent:
        query = query.where(Agent.name == agent)
    if human:
        query = query.where(Run.human == human)
    stale = utcnow() - SANDBOX_TTL
    if status == "running":
        query = query.where(Run.status == "running", Run.last_heartbeat_at > stale)
    elif status == "lost":
        query = query.where(Run.status == "running", Run.last_heartbeat_at <= stale)
    elif status == "ended":
        query = query.where(Run.status == "ended")
    return query


def list_runs(v: Viewer, *, project: str = "", agent: str = "", human: str = "",
              status: str = "", before: str = "") -> tuple[list[dict[str, Any]], str | None]:
    query = select(Run, Project.name, Agent.name).join(Project, Project.id == Run.project_id)\
        .outerjoin(Agent, Agent.id == Run.agent_id)
    query = _filters(v, query, project, agent, human, status)
    if before:
        ts, _, rid = before.partition("~")
        try:
            at = dt.datetime.fromisoformat(ts)
        except ValueError:
            at = None
        if at is not None:
            query = query.where((Run.started_at < at) | ((Run.started_at == at) & (Run.id < rid)))
    query = query.order_by(Run.started_at.desc(), Run.id.desc()).limit(PAGE + 1)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for r, p, a in v.session.execute(query):
        assert isinstance(r, Run)
        rows.append({"run": r, "project": p, "agent": a, "status": status_of(r, now)})
    more = None
    if len(rows) > PAGE:
        rows = rows[:PAGE]
        last = rows[-1]["run"]
        more = f"{last.started_at.isoformat()}~{last.id}"
    return rows, more


@router.get("/sandboxes", response_class=HTMLResponse)
def sandboxes(project: str = Query("", max_length=100), agent: str = Query("", max_length=101),
              human: str = Query("", max_length=320), status: str = Query("", max_length=16),
              before: str = Query("", max_length=100), v: Viewer = Depends(viewer)
              ) -> HTMLResponse:
    rows, more = list_runs(v, project=project, agent=agent, human=human, status=status,
                           before=before)
    filters = {"project": project, "agent": agent, "human": human, "status": status}
    return page(v, "ui/sandboxes.html", "sandboxes", rows=rows, more=more, filters=filters,
                projects=v.projects())


def _run(v: Viewer, run_id: str) -> tuple[Run, Project, str | None]:
    row = v.session.get(Run, run_id) if len(run_id) <= 36 else None
    if row is None:
        raise not_found()
    project = v.session.get(Project, row.project_id)
    assert project is not None
    v.allow(Permission.RUN_READ, project.team_id)
    agent = v.session.get(Agent, row.agent_id) if row.agent_id else None
    return row, project, agent.name if agent else None


def events_after(session: Session, run_id: str, after: int, types: list[str] | None,
                 limit: int = EVENTS_PAGE) -> list[timeline.Entry]:
    query = select(AuditEvent.seq, AuditEvent.ts_us, AuditEvent.type, AuditEvent.data)\
        .where(AuditEvent.run_id == run_id, AuditEvent.seq > after)
    if types is not None:
        query = query.where(AuditEvent.type.in_(types))
    rows = session.execute(query.order_by(AuditEvent.seq).limit(limit))
    return [timeline.entry(seq, ts, type_, data) for seq, ts, type_, data in rows]


def _types(show: str) -> list[str] | None:
    if show in timeline.TYPES_OF:
        return timeline.TYPES_OF[show]
    return None


@router.get("/sandboxes/{run_id}", response_class=HTMLResponse)
def run_page(run_id: str, after: int = Query(0, ge=0), show: str = Query("", max_length=16),
             v: Viewer = Depends(viewer)) -> HTMLResponse:
    run, project, agent = _run(v, run_id)
    entries = events_after(v.session, run.id, after, _types(show))
    counts = dict(v.session.execute(
        select(AuditEvent.type, func.count()).where(AuditEvent.run_id == run.id)
        .group_by(AuditEvent.type)).all())
    by_category: dict[str, int] = {}
    for type_, n in counts.items():
        key = timeline.category(type_)
        by_category[key] = by_category.get(key, 0) + n
    try:
        _, resolved = policies.resolve_project(v.session, project)
        current_digest: str | None = resolved.digest
    except Exception:  # a policy that no longer composes: shown as unknown, never a 500
        current_digest = None
    status = status_of(run, utcnow())
    nxt = entries[-1].seq if len(entries) == EVENTS_PAGE else None
    return page(v, "ui/run.html", "sandboxes", run=run, project=project, agent=agent,
                status=status, entries=entries, next_after=nxt, show=show,
                categories=timeline.CATEGORIES, by_category=by_category,
                current_digest=current_digest,
                live=run.status == "running" and not show and nxt is None,
                last_seq=entries[-1].seq if entries else after,
                can_kill=v.can(Permission.RUN_KILL, project.team_id))


@router.get("/sandboxes/{run_id}/verify", response_class=HTMLResponse)
def verify(run_id: str, v: Viewer = Depends(viewer)) -> HTMLResponse:
    run, _, _ = _run(v, run_id)
    check = verify_run(v.session, run)
    return partial("ui/_verify.html", check=check)


@router.post("/sandboxes/{run_id}/kill", response_class=HTMLResponse)
def kill(run_id: str, reason: str = Form("", max_length=500),
         v: Viewer = Depends(viewer)) -> HTMLResponse:
    run, project, _ = _run(v, run_id)
    v.allow_change(Permission.RUN_KILL, project.team_id)
    if run.status != "running":
        return partial("ui/_notice.html", kind="error", text="this run has already ended")
    kill_run(v.session, run, project, actor=v.principal.actor, reason=reason or None)
    v.session.commit()
    return partial("ui/_notice.html", kind="ok",
                   text="kill requested: the launcher stops the sandbox at its next heartbeat")


def _poll(request: Request, run_id: str, after: int) -> tuple[list[timeline.Entry], str]:
    with get_db(request).session() as session:
        run = session.get(Run, run_id)
        if run is None:
            return [], "gone"
        return events_after(session, run_id, after, None), run.status


def sse(event: str, html: str, ident: int | None = None) -> str:
    lines = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\n{lines}\n"


@router.get("/sandboxes/{run_id}/live")
async def live(request: Request, run_id: str, after: int = Query(0, ge=0),
               v: Viewer = Depends(viewer)) -> StreamingResponse:
    """Server-sent events: new timeline rows as they are ingested, then ``ended``."""
    run, _, _ = _run(v, run_id)
    v.session.close()  # hold no connection while streaming
    resumed = request.headers.get("last-event-id", "")
    if resumed.isdigit() and len(resumed) < 19:
        after = max(after, int(resumed))  # a reconnect goes on where the stream stopped
    rows = env.get_template("ui/_events.html")

    async def stream() -> AsyncIterator[str]:
        last, deadline = after, time.monotonic() + TAIL_LIFE_S
        yield ": tail\n\n"
        while time.monotonic() < deadline and not await request.is_disconnected():
            entries, status = await run_in_threadpool(_poll, request, run.id, last)
            if entries:
                last = entries[-1].seq
                yield sse("events", rows.render(entries=entries), last)
            if status != "running" and len(entries) < EVENTS_PAGE:
                yield sse("ended", f"<span>{status}</span>")
                return
            if not entries:
                await asyncio.sleep(TAIL_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
