"""Overview: what needs a security lead's eyes now, over the viewer's teams only.

Live sandboxes, denials and approvals waiting in the last hour, spend today against daily
budgets, trails the server refused (a chain that did not verify on ingest) and launchers that
went silent. Each figure is one bounded, indexed query.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import Depends
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from corral.server.models import AdminEvent, AuditEvent, Budget, Project, Run, SpendRow, utcnow
from corral.server.web.ui import Viewer, make_router, page, viewer
from corral.server.web.views.approvals import pending
from corral.server.web.views.runs import SILENT, list_runs

__all__ = ["router"]

router = make_router()
DENIALS_CAP = 10_000


def _scoped(v: Viewer, query: Any, column: Any) -> Any:
    visible = v.teams()
    return query if visible is None else query.where(column.in_(visible))


def spend_today(v: Viewer) -> list[dict[str, Any]]:
    """Per project: micro-dollars spent (settled, else reserved) today, and daily budgets."""
    start = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    cost = func.coalesce(SpendRow.cost_micro_usd, SpendRow.reserved_micro_usd)
    spent = dict(v.session.execute(_scoped(v, select(Project.name, func.sum(cost))
                                           .join(Project, Project.id == SpendRow.project_id)
                                           .where(SpendRow.at >= start)
                                           .group_by(Project.name), Project.team_id)).all())
    budgets = dict(v.session.execute(_scoped(v, select(Project.name,
                                                       func.min(Budget.amount_micro_usd))
                                             .join(Project, Project.id == Budget.project_id)
                                             .where(Budget.scope == "project",
                                                    Budget.period == "day")
                                             .group_by(Project.name), Project.team_id)).all())
    names = sorted(set(spent) | set(budgets))
    out = []
    for name in names:
        used, cap = int(spent.get(name) or 0), budgets.get(name)
        pct = min(100, round(100 * used / cap)) if cap else None
        out.append({"project": name, "spent": used, "budget": cap, "pct": pct})
    return out


@router.get("/", response_class=HTMLResponse)
def overview(v: Viewer = Depends(viewer)) -> HTMLResponse:
    now = utcnow()
    hour_ago_us = int((now - dt.timedelta(hours=1)).timestamp() * 1e6)
    live, _ = list_runs(v, status="running")
    # project_id IN (...) and a ts_us range: the (project_id, ts_us) index, never a scan
    ids = [p.id for p in v.projects()]
    # counted up to DENIALS_CAP: an hour of a flood costs what a busy hour does
    found = select(AuditEvent.id).where(AuditEvent.project_id.in_(ids),
                                        AuditEvent.ts_us >= hour_ago_us,
                                        AuditEvent.type == "proxy.deny").limit(DENIALS_CAP + 1)
    denials = (v.session.scalar(select(func.count()).select_from(found.subquery())) or 0) \
        if ids else 0
    waiting = pending(v.session, v.principal, limit=50)
    silent = v.session.execute(_scoped(v, select(Run, Project.name)
                                       .join(Project, Project.id == Run.project_id)
                                       .where(Run.status == "running",
                                              Run.last_heartbeat_at < now - SILENT)
                                       .order_by(Run.last_heartbeat_at).limit(20),
                                       Project.team_id)).all()
    refused = v.session.scalars(_scoped(v, select(AdminEvent)
                                        .where(AdminEvent.action == "audit.refused",
                                               AdminEvent.at >= now - dt.timedelta(days=1))
                                        .order_by(AdminEvent.at.desc()).limit(20),
                                        AdminEvent.team_id)).all()
    return page(v, "ui/overview.html", "overview", live=live, denials=denials,
                denials_capped=denials > DENIALS_CAP,
                waiting=waiting, silent=silent, refused=refused, spend=spend_today(v),
                now=now)
