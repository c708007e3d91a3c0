"""A user's own tokens (list, revoke) and an admin disabling a user.

Invariants: a caller sees and revokes only tokens of its own user (a service token: itself);
revoking someone else's token id answers exactly like an unknown id. Disabling a user revokes
all their tokens and web sessions in the same transaction, so nothing they held works after.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select, update

from corral.server.admin_log import record
from corral.server.api.deps import Access, require
from corral.server.authz import Permission
from corral.server.errors import ApiError
from corral.server.models import Token, User, WebSession, utcnow

__all__ = ["router"]

router = APIRouter(tags=["identity"])


def _mine(access: Access) -> Any:
    p = access.principal
    if p.email is not None:
        user = access.session.scalars(select(User).where(User.email == p.email)).one()
        return Token.user_id == user.id
    return Token.id == p.token_id


def _row(t: Token) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "kind": t.kind, "step_up": t.step_up,
            "created_at": t.created_at.isoformat(timespec="seconds"),
            "expires_at": t.expires_at.isoformat(timespec="seconds"),
            "last_used_at": t.last_used_at.isoformat(timespec="seconds")
            if t.last_used_at else None,
            "revoked": t.revoked_at is not None}


@router.get("/tokens")
def list_tokens(access: Access = require(Permission.TOKEN_SELF)) -> dict[str, Any]:
    rows = access.session.scalars(select(Token).where(_mine(access)).order_by(Token.id)).all()
    out = []
    for t in rows:
        item = _row(t)
        item["current"] = t.id == access.principal.token_id
        out.append(item)
    return {"tokens": out}


@router.delete("/tokens/{token}")
def revoke_token(token: int, access: Access = require(Permission.TOKEN_SELF)) -> dict[str, Any]:
    row = access.session.scalars(select(Token).where(_mine(access), Token.id == token)).first()
    if row is None or row.revoked_at is not None:
        return {"revoked": False}
    row.revoked_at = utcnow()
    record(access.session, access.principal.actor, "token.revoke", f"token:{row.id}",
           name=row.name)
    access.session.commit()
    return {"revoked": True}


@router.post("/users/{email}/disable")
def disable_user(email: str, access: Access = require(Permission.USER_MANAGE)) -> dict[str, Any]:
    # Org-wide: authorized before the name is looked up, so a non-admin learns nothing.
    user = access.session.scalars(select(User).where(User.email == email)).first()
    if user is None:
        raise ApiError(404, "not_found", "no such user")
    now = utcnow()
    user.disabled = True
    tokens = access.session.execute(update(Token).where(
        Token.user_id == user.id, Token.revoked_at.is_(None)).values(revoked_at=now))
    access.session.execute(update(WebSession).where(
        WebSession.user_id == user.id, WebSession.revoked_at.is_(None)).values(revoked_at=now))
    revoked = getattr(tokens, "rowcount", 0)
    record(access.session, access.principal.actor, "user.disable", user.email,
           tokens_revoked=revoked)
    access.session.commit()
    return {"email": user.email, "disabled": True, "tokens_revoked": revoked}
