"""Projects and their agents."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from corral.server.admin_log import record
from corral.server.api import resolve
from corral.server.api.deps import Access, require
from corral.server.api.schemas import AgentIn, ProjectIn
from corral.server.authz import Permission, visible_teams
from corral.server.errors import ApiError
from corral.server.models import Agent, Project, Team

__all__ = ["router"]

router = APIRouter(tags=["projects"])


def project_json(project: Project, team: str) -> dict[str, Any]:
    return {"name": project.name, "team": team, "require_server": project.require_server,
            "max_offline_s": project.max_offline_s, "created_at": project.created_at.isoformat()}


@router.get("/projects")
def list_projects(access: Access = require(Permission.LIST)) -> dict[str, Any]:
    query = select(Project, Team.name).join(Team, Team.id == Project.team_id)\
        .order_by(Project.name)
    visible = visible_teams(access.principal)
    if visible is not None:
        query = query.where(Project.team_id.in_(visible))
    return {"projects": [project_json(p, t) for p, t in access.session.execute(query)]}


@router.post("/teams/{team}/projects", status_code=201)
def create_project(body: ProjectIn,
                   access: Access = require(Permission.PROJECT_CREATE, resolve.team)
                   ) -> dict[str, Any]:
    session, team = access.session, access.resource
    if session.scalar(select(Project).where(Project.name == body.name)) is not None:
        raise ApiError(409, "conflict", f"project {body.name} exists")
    project = Project(name=body.name, team_id=team.id, require_server=body.require_server,
                      max_offline_s=body.max_offline_s)
    session.add(project)
    record(session, access.principal.actor, "project.create", body.name, team_id=team.id,
           require_server=body.require_server)
    session.commit()
    return project_json(project, team.name)


@router.get("/projects/{project}")
def get_project(access: Access = require(Permission.PROJECT_READ, resolve.project)
                ) -> dict[str, Any]:
    team = access.session.get(Team, access.resource.team_id)
    assert team is not None
    return project_json(access.resource, team.name)


@router.get("/projects/{project}/agents")
def list_agents(access: Access = require(Permission.PROJECT_READ, resolve.project)
                ) -> dict[str, Any]:
    rows = access.session.scalars(select(Agent).where(
        Agent.project_id == access.resource.id).order_by(Agent.name))
    return {"agents": [{"name": a.name, "project": access.resource.name,
                        "created_at": a.created_at.isoformat()} for a in rows]}


@router.post("/projects/{project}/agents", status_code=201)
def create_agent(body: AgentIn, access: Access = require(Permission.AGENT_CREATE,
                                                         resolve.project)) -> dict[str, Any]:
    session, project = access.session, access.resource
    if session.scalar(select(Agent).where(Agent.project_id == project.id,
                                          Agent.name == body.name)) is not None:
        raise ApiError(409, "conflict", f"agent {body.name} exists in {project.name}")
    agent = Agent(project_id=project.id, name=body.name)
    session.add(agent)
    record(session, access.principal.actor, "agent.create", f"{project.name}/{body.name}",
           team_id=project.team_id)
    session.commit()
    return {"name": agent.name, "project": project.name, "created_at": agent.created_at.isoformat()}
