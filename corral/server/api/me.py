"""Who the caller is, as the server sees it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from corral.server.api.deps import Access, require
from corral.server.authz import Permission
from corral.server.models import Team

__all__ = ["router"]

router = APIRouter(tags=["identity"])


@router.get("/whoami")
def whoami(access: Access = require(Permission.WHOAMI)) -> dict[str, Any]:
    p = access.principal
    names = {i: n for i, n in access.session.execute(
        select(Team.id, Team.name).where(Team.id.in_(p.team_roles)))}
    return {"actor": p.actor, "kind": p.kind, "email": p.email, "subject": p.subject,
            "token_id": p.token_id, "step_up": p.step_up,
            "org_role": p.org_role.label if p.org_role else None,
            "teams": {names.get(t, str(t)): r.label for t, r in p.team_roles.items()}}
