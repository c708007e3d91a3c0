"""Credentials (names, bindings, last use; set a value, never read one), budgets and spend
(charts by project, agent, model and day), audit search and JSONL export.

Invariants:
- No response of this module contains a credential value: the list reads only names and
  metadata, and a set answers with the name alone (``api.credentials.set_credential`` seals
  the value before anything is stored). The value field is a password input the page never
  fills in.
- Spend figures are integer micro-dollars summed in SQL, shown as dollars.
- Audit search and export run the API's own project-scoped query, in id order, one bounded
  page at a time; an export streams every matching event without holding them all.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

from fastapi import Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import func, select

from corral.server import policies
from corral.server.api import credentials
from corral.server.api.audit import list_events
from corral.server.api.deps import Access, get_db
from corral.server.api.schemas import CredentialIn
from corral.server.authz import Permission, Principal
from corral.server.errors import ApiError
from corral.server.models import Agent, Budget, Credential, Project, SpendRow, Team, utcnow
from corral.server.web.ui import Viewer, make_router, page, partial, viewer

__all__ = ["router"]

router = make_router()


def _bindings(v: Viewer, project: Project) -> dict[str, list[str]]:
    """credential name -> the rules of the project's resolved policy that inject it."""
    try:
        _, rp = policies.resolve_project(v.session, project)
    except Exception:  # a policy that no longer composes shows no bindings, not a 500
        return {}
    out: dict[str, list[str]] = {}
    for rule in rp.rules:
        if rule.credential:
            out.setdefault(rule.credential, []).append(f"{rule.host} ({rule.origin})")
    return out


@router.get("/credentials", response_class=HTMLResponse)
def index(project: str = Query("", max_length=100), v: Viewer = Depends(viewer)
          ) -> HTMLResponse:
    mine = [p for p in v.projects() if v.can(Permission.CREDENTIAL_READ, p.team_id)]
    chosen = next((p for p in mine if p.name == project), mine[0] if mine else None)
    if project and (chosen is None or chosen.name != project):
        chosen = v.project(project, Permission.CREDENTIAL_READ)
    rows: list[Credential] = []
    bindings: dict[str, list[str]] = {}
    if chosen is not None:
        rows = list(v.session.scalars(select(Credential).where(
            Credential.project_id == chosen.id).order_by(Credential.name)))
        bindings = _bindings(v, chosen)
    return page(v, "ui/credentials.html", "credentials", projects=mine, chosen=chosen,
                rows=rows, bindings=bindings,
                can_write=chosen is not None and v.can(Permission.CREDENTIAL_WRITE,
                                                       chosen.team_id))


@router.post("/credentials/{project}", response_class=HTMLResponse)
def set_value(request: Request, project: str,
              name: str = Form(pattern=r"^[a-z0-9][a-z0-9-]{0,99}$"),
              value: str = Form(max_length=64 * 1024), release: bool = Form(False),
              v: Viewer = Depends(viewer)) -> HTMLResponse:
    row = v.project(project, Permission.CREDENTIAL_READ)
    v.allow_change(Permission.CREDENTIAL_WRITE, row.team_id)
    try:
        body = CredentialIn(value=value, release=release)
    except ValidationError:
        return partial("ui/_notice.html", kind="error", text="value: give a value "
                       "(1 to 65536 characters)", status=422)
    credentials.set_credential(request, body, name, Access(v.principal, v.session, row))
    return partial("ui/_notice.html", kind="ok", text=f"{name} set; its value cannot be "
                   "read back")


def _micro(value: Any) -> float:
    return round(int(value or 0) / 1e6, 6)


@router.get("/spend", response_class=HTMLResponse)
def spend(days: int = Query(30, ge=1, le=366), v: Viewer = Depends(viewer)) -> HTMLResponse:
    since = utcnow() - dt.timedelta(days=days)
    cost = func.coalesce(SpendRow.cost_micro_usd, SpendRow.reserved_micro_usd)
    ids = [p.id for p in v.projects()]
    base = select().select_from(SpendRow).where(SpendRow.project_id.in_(ids),
                                                SpendRow.at >= since)

    def by(*cols: Any, join: Any = None) -> list[tuple[str, float]]:
        query = base.add_columns(*cols, func.sum(cost))
        if join is not None:
            query = query.outerjoin(*join)
        query = query.group_by(*cols).order_by(func.sum(cost).desc()).limit(30)
        return [(str(k if k is not None else "(none)"), _micro(s))
                for k, s in v.session.execute(query)]

    day = func.substr(func.cast(SpendRow.at, type_=_text()), 1, 10)
    charts = {
        "project": by(Project.name, join=(Project, Project.id == SpendRow.project_id)),
        "agent": by(Agent.name, join=(Agent, Agent.id == SpendRow.agent_id)),
        "model": by(SpendRow.model),
        "day": sorted(by(day)),
    }
    budgets = v.session.execute(
        select(Budget, Project.name, Team.name).outerjoin(Project, Project.id == Budget.project_id)
        .outerjoin(Team, Team.id == Budget.team_id).order_by(Budget.scope, Budget.id)
        .limit(200)).all()
    visible = v.teams()
    budgets = [b for b in budgets if visible is None or b[0].scope == "org" or
               (b[0].team_id in visible) or (b[1] is not None and b[0].project_id in ids)]
    total = sum(s for _, s in charts["project"])
    return page(v, "ui/spend.html", "spend", charts=charts, budgets=budgets, days=days,
                total=total, empty=not charts["project"],
                chart_json={k: json.dumps({"labels": [a for a, _ in rows],
                                           "values": [b for _, b in rows]})
                            for k, rows in charts.items()})


def _text() -> Any:
    from sqlalchemy import String

    return String()


def _search(access: Access, params: dict[str, Any], after: int, limit: int) -> dict[str, Any]:
    return list_events(human=params.get("human") or None, agent=params.get("agent") or None,
                       run=params.get("run") or None, type_=params.get("type") or None,
                       after=after, limit=limit, access=access)


def _audit_params(project: str, type_: str, human: str, agent: str, run: str) -> dict[str, Any]:
    return {"project": project, "type": type_, "human": human, "agent": agent, "run": run}


@router.get("/audit", response_class=HTMLResponse)
def audit(project: str = Query("", max_length=100), type_: str = Query("", alias="type",
                                                                      max_length=64),
          human: str = Query("", max_length=320), agent: str = Query("", max_length=101),
          run: str = Query("", max_length=36), after: int = Query(0, ge=0),
          v: Viewer = Depends(viewer)) -> HTMLResponse:
    mine = v.projects()
    params = _audit_params(project, type_, human, agent, run)
    found: dict[str, Any] = {"events": [], "next": None}
    if project:
        row = v.project(project, Permission.RUN_READ)
        found = _search(Access(v.principal, v.session, row), params, after, 100)
    for e in found["events"]:
        e["data_text"] = json.dumps(e["data"], ensure_ascii=False, sort_keys=True)[:600]
    return page(v, "ui/audit.html", "audit", projects=mine, params=params, found=found)


def _export(request: Request, principal: Principal, project_id: int,
            params: dict[str, Any]) -> Iterator[bytes]:
    after = 0
    while True:
        with get_db(request).session() as session:
            project = session.get(Project, project_id)
            if project is None:
                return
            page_ = _search(Access(principal, session, project), params, after, 2000)
        for e in page_["events"]:
            yield (json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n").encode()
        if page_["next"] is None:
            return
        after = page_["next"]


@router.get("/audit/export.jsonl")
def export(request: Request, project: str = Query(max_length=100),
           type_: str = Query("", alias="type", max_length=64),
           human: str = Query("", max_length=320), agent: str = Query("", max_length=101),
           run: str = Query("", max_length=36), v: Viewer = Depends(viewer)
           ) -> StreamingResponse:
    row = v.project(project, Permission.RUN_READ)
    params = _audit_params(project, type_, human, agent, run)
    principal, project_id = v.principal, row.id
    v.session.close()
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _export(request, principal, project_id, params), media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{row.name}-audit-{stamp}.jsonl"'})


@router.post("/audit/verify", response_class=HTMLResponse)
def verify(project: str = Form(max_length=100), v: Viewer = Depends(viewer)) -> HTMLResponse:
    from corral.server.trail_check import verify_project

    row = v.project(project, Permission.RUN_READ)
    try:
        check = verify_project(v.session, row)
    except ApiError as err:
        return partial("ui/_notice.html", kind="error", text=err.message)
    return partial("ui/_verify.html", check=check)
