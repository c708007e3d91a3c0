"""Resolvers: path parameters -> (resource, owning team), for ``require``.

Invariants: an absent resource is the same 404 as one outside the caller's teams (``decide``
raises that one), so names cannot be probed across teams.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.server.api.deps import Resolved
from corral.server.errors import ApiError
from corral.server.models import Project, Run, Team

__all__ = ["project", "run", "team"]


def _missing() -> ApiError:
    return ApiError(404, "not_found", "no such resource")


def team(session: Session, params: dict[str, Any]) -> Resolved:
    row = session.scalar(select(Team).where(Team.name == params["team"]))
    if row is None:
        raise _missing()
    return Resolved(row, row.id)


def project(session: Session, params: dict[str, Any]) -> Resolved:
    row = session.scalar(select(Project).where(Project.name == params["project"]))
    if row is None:
        raise _missing()
    return Resolved(row, row.team_id)


def run(session: Session, params: dict[str, Any]) -> Resolved:
    row = session.get(Run, params["run"])
    if row is None:
        raise _missing()
    proj = session.get(Project, row.project_id)
    assert proj is not None
    return Resolved(row, proj.team_id, row.id)
