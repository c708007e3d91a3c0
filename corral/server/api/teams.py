"""Teams and their members."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path
from sqlalchemy import select

from corral.server.admin_log import record
from corral.server.api import resolve
from corral.server.api.deps import Access, require
from corral.server.api.schemas import MemberIn, TeamIn
from corral.server.authz import Permission, visible_teams
from corral.server.errors import ApiError
from corral.server.models import Membership, Team, User

__all__ = ["router"]

router = APIRouter(tags=["teams"])
Email = Path(pattern=r"^[^@\s/]{1,200}@[^@\s/]{1,200}$")


def team_json(team: Team) -> dict[str, Any]:
    return {"name": team.name, "created_at": team.created_at.isoformat()}


@router.get("/teams")
def list_teams(access: Access = require(Permission.LIST)) -> dict[str, Any]:
    query = select(Team).order_by(Team.name)
    visible = visible_teams(access.principal)
    if visible is not None:
        query = query.where(Team.id.in_(visible))
    return {"teams": [team_json(t) for t in access.session.scalars(query)]}


@router.post("/teams", status_code=201)
def create_team(body: TeamIn, access: Access = require(Permission.TEAM_CREATE)) -> dict[str, Any]:
    session = access.session
    if session.scalar(select(Team).where(Team.name == body.name)) is not None:
        raise ApiError(409, "conflict", f"team {body.name} exists")
    team = Team(name=body.name)
    session.add(team)
    session.flush()
    record(session, access.principal.actor, "team.create", body.name, team_id=team.id)
    session.commit()
    return team_json(team)


@router.get("/teams/{team}/members")
def list_members(access: Access = require(Permission.TEAM_READ, resolve.team)) -> dict[str, Any]:
    rows = access.session.execute(
        select(User.email, Membership.role).join(Membership, Membership.user_id == User.id)
        .where(Membership.team_id == access.resource.id).order_by(User.email))
    return {"members": [{"email": email, "role": role} for email, role in rows]}


@router.put("/teams/{team}/members/{email}")
def set_member(body: MemberIn, email: str = Email,
               access: Access = require(Permission.MEMBER_MANAGE, resolve.team)
               ) -> dict[str, Any]:
    session, team = access.session, access.resource
    email = email.lower()
    user = session.scalar(select(User).where(User.email == email))
    if user is None:  # known before their first SSO login, so a membership can be prepared
        user = User(email=email)
        session.add(user)
        session.flush()
    member = session.scalar(select(Membership).where(
        Membership.team_id == team.id, Membership.user_id == user.id))
    before = member.role if member else None
    if member is None:
        session.add(Membership(team_id=team.id, user_id=user.id, role=body.role))
    else:
        member.role = body.role
    record(session, access.principal.actor, "member.set", f"{team.name}/{email}",
           team_id=team.id, role=body.role, before=before)
    session.commit()
    return {"team": team.name, "email": email, "role": body.role}
