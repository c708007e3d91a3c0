"""Projects (and their agents), teams (and their members), the viewer's own tokens.

Invariants: changes go through the API's own route functions (same validation, same admin
record, same commit) after the same permission check, so the UI can do nothing the API
would refuse. Creating a team needs the org-wide admin role, a project the team's admin role,
both with a fresh sign-in (step-up), as in the API. A form is shown to whoever holds the role
(with a hint when the sign-in is stale); the route decides, never the form. A token's secret
is never shown (only ever stored hashed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from fastapi import Depends, Form, Path
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy import func, select

from corral.server.api import logins, projects, teams
from corral.server.api.deps import Access
from corral.server.api.schemas import AgentIn, MemberIn, ProjectIn, TeamIn
from corral.server.authz import Permission
from corral.server.errors import ApiError
from corral.server.models import Agent, Membership, Project, Run, Team, Token, User
from corral.server.web.ui import Viewer, make_router, page, partial, viewer

__all__ = ["router"]

router = make_router()


def _invalid(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:3])


def _holds_role(v: Viewer, permission: Permission, team_id: int | None = None) -> bool:
    """Whether the viewer's role allows ``permission`` once signed in afresh (forms only)."""
    fresh = dataclasses.replace(v.principal, step_up=True)
    return Viewer(v.request, v.session, v.current, fresh).can(permission, team_id)


def _api_change(v: Viewer, change: Callable[[], object]) -> HTMLResponse | None:
    """Make a change through the API's own function; its refusal (bad input 422, or the API's
    error) as the page's notice, ``None`` when it went through."""
    try:
        change()
    except ValidationError as err:
        return partial("ui/_notice.html", kind="error", text=_invalid(err), status=422)
    except ApiError as err:
        v.session.rollback()
        return partial("ui/_notice.html", kind="error", text=err.message, status=err.status)
    return None


@router.get("/projects", response_class=HTMLResponse)
def project_list(v: Viewer = Depends(viewer)) -> HTMLResponse:
    rows = v.projects()
    names = dict(v.session.execute(select(Team.id, Team.name)).all())
    live = dict(v.session.execute(select(Run.project_id, func.count()).where(
        Run.status == "running").group_by(Run.project_id)).all())
    creatable = sorted(n for i, n in names.items() if _holds_role(v, Permission.PROJECT_CREATE, i))
    return page(v, "ui/projects.html", "projects", rows=rows, teams=names, live=live,
                creatable=creatable)


@router.post("/projects", response_class=HTMLResponse)
def create_project(name: str = Form(max_length=100, alias="team"),
                   project: str = Form(max_length=100),
                   require_server: bool = Form(False),
                   v: Viewer = Depends(viewer)) -> HTMLResponse:
    team = v.team(name, Permission.TEAM_READ)
    v.allow_change(Permission.PROJECT_CREATE, team.id)
    refused = _api_change(v, lambda: projects.create_project(
        ProjectIn(name=project, require_server=require_server),
        Access(v.principal, v.session, team)))
    if refused is not None:
        return refused
    return partial("ui/_created.html", text=f"project {project} created in team {team.name}",
                   href=f"/projects/{project}", label=f"Open {project}")


@router.get("/projects/{name}", response_class=HTMLResponse)
def project_page(name: str, v: Viewer = Depends(viewer)) -> HTMLResponse:
    project = v.project(name, Permission.PROJECT_READ)
    team = v.session.get(Team, project.team_id)
    agents = list(v.session.scalars(select(Agent).where(Agent.project_id == project.id)
                                    .order_by(Agent.name)))
    return page(v, "ui/project.html", "projects", project=project, team=team, agents=agents,
                can_add=v.can(Permission.AGENT_CREATE, project.team_id))


@router.post("/projects/{name}/agents", response_class=HTMLResponse)
def add_agent(name: str, agent: str = Form(max_length=101),
              v: Viewer = Depends(viewer)) -> HTMLResponse:
    project = v.project(name, Permission.PROJECT_READ)
    v.allow_change(Permission.AGENT_CREATE, project.team_id)
    refused = _api_change(v, lambda: projects.create_agent(
        AgentIn(name=agent), Access(v.principal, v.session, project)))
    if refused is not None:
        return refused
    return partial("ui/_notice.html", kind="ok", text=f"agent {agent} added; reload to see it")


@router.get("/teams", response_class=HTMLResponse)
def team_list(v: Viewer = Depends(viewer)) -> HTMLResponse:
    query = select(Team).order_by(Team.name)
    visible = v.teams()
    if visible is not None:
        query = query.where(Team.id.in_(visible))
    rows = list(v.session.scalars(query))
    counts = dict(v.session.execute(select(Membership.team_id, func.count())
                                    .group_by(Membership.team_id)).all())
    return page(v, "ui/teams.html", "teams", rows=rows, counts=counts,
                can_create=_holds_role(v, Permission.TEAM_CREATE))


@router.post("/teams", response_class=HTMLResponse)
def create_team(team: str = Form(max_length=100), v: Viewer = Depends(viewer)) -> HTMLResponse:
    v.allow_change(Permission.TEAM_CREATE)
    refused = _api_change(v, lambda: teams.create_team(TeamIn(name=team),
                                                        Access(v.principal, v.session)))
    if refused is not None:
        return refused
    return partial("ui/_created.html", text=f"team {team} created",
                   href=f"/teams/{team}", label=f"Open {team}")


@router.get("/teams/{name}", response_class=HTMLResponse)
def team_page(name: str, v: Viewer = Depends(viewer)) -> HTMLResponse:
    team = v.team(name, Permission.TEAM_READ)
    members = v.session.execute(
        select(User.email, User.name, Membership.role, Membership.source)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.team_id == team.id).order_by(User.email)).all()
    owned = list(v.session.scalars(select(Project).where(Project.team_id == team.id)
                                   .order_by(Project.name)))
    return page(v, "ui/team.html", "teams", team=team, members=members, projects=owned,
                can_manage=v.can(Permission.MEMBER_MANAGE, team.id))


@router.post("/teams/{name}/members", response_class=HTMLResponse)
def set_member(name: str, email: str = Form(max_length=320), role: str = Form(max_length=16),
               v: Viewer = Depends(viewer)) -> HTMLResponse:
    team = v.team(name, Permission.TEAM_READ)
    v.allow_change(Permission.MEMBER_MANAGE, team.id)
    try:
        body = MemberIn(role=role)  # type: ignore[arg-type]  # validated here
        if "@" not in email or "/" in email or any(c.isspace() for c in email):
            return partial("ui/_notice.html", kind="error", text="email: not an address",
                           status=422)
        teams.set_member(body, email, Access(v.principal, v.session, team))
    except ValidationError as err:
        return partial("ui/_notice.html", kind="error", text=_invalid(err), status=422)
    return partial("ui/_notice.html", kind="ok", text=f"{email} is now {role} in {team.name}")


@router.get("/tokens", response_class=HTMLResponse)
def tokens(v: Viewer = Depends(viewer)) -> HTMLResponse:
    rows = list(v.session.scalars(select(Token).where(Token.user_id == v.current.user.id)
                                  .order_by(Token.id.desc()).limit(200)))
    return page(v, "ui/tokens.html", "tokens", rows=rows)


@router.post("/tokens/{ident}/revoke", response_class=HTMLResponse)
def revoke(ident: int = Path(ge=1, le=2**62), v: Viewer = Depends(viewer)) -> HTMLResponse:
    answer = logins.revoke_token(ident, Access(v.principal, v.session))
    text = "revoked" if answer["revoked"] else "no such live token of yours"
    return partial("ui/_notice.html", kind="ok" if answer["revoked"] else "error", text=text)
