"""Request dependencies: the database session, the authenticated principal, ``require``.

Invariants: every route under ``/api/v1`` takes ``require(Permission.X, ...)``, which
authenticates (401 with a reason, recorded as ``auth.refused``) and then calls
``authz.decide`` with the team of the resource named in the path; a refusal by ``decide``
(and a sandbox token on another run's route) is recorded as ``authz.refused``. The resolver
that finds that team is the same one the handler then uses, so the checked resource is the
served one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.server.admin_log import record_now
from corral.server.authz import Permission, Principal, Role, decide, other_run
from corral.server.db import Database
from corral.server.errors import ApiError
from corral.server.models import Membership, Run, Token, User, utcnow
from corral.server.tokens import SANDBOX_AUDIENCE, TokenRefused, find

__all__ = ["Access", "Resolved", "get_session", "principal_for", "require", "user_principal"]


def get_db(request: Request) -> Database:
    db = request.app.state.db
    assert isinstance(db, Database)
    return db


def get_session(request: Request) -> Iterator[Session]:
    with get_db(request).sessions() as session:
        yield session


def principal_for(session: Session, token: Token) -> Principal:
    role = Role.parse(token.role)
    if token.kind == "sandbox":
        # The launching human is the actor of everything the run's token does.
        run = session.get(Run, token.run_id) if token.run_id else None
        return Principal(actor=run.human if run else f"run:{token.run_id}", kind="sandbox",
                         token_id=token.id, run_id=token.run_id)
    if token.kind == "user" and token.user_id is not None:
        user = session.get(User, token.user_id)
        assert user is not None
        return user_principal(session, user, token_id=token.id, step_up=token.step_up)
    if token.team_id is not None:
        return Principal(actor=f"token:{token.name}", kind=token.kind, token_id=token.id,
                         team_roles={token.team_id: role})
    return Principal(actor=f"token:{token.name}", kind=token.kind, token_id=token.id,
                     org_role=role)


def user_principal(session: Session, user: User, *, token_id: int | None,
                   step_up: bool) -> Principal:
    teams = {m.team_id: Role.parse(m.role) for m in session.scalars(
        select(Membership).where(Membership.user_id == user.id))}
    org = Role.parse(user.org_role) if user.org_role else None
    return Principal(actor=user.email, kind="user", token_id=token_id, org_role=org,
                     team_roles=teams, step_up=step_up, subject=user.idp_subject,
                     email=user.email)


def _authenticate(request: Request, session: Session) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if not header:
        from corral.server.web.session import api_principal

        # The web UI calls the same API with its session cookie (and CSRF token).
        by_cookie = api_principal(request, session)
        if by_cookie is not None:
            return by_cookie
        raise ApiError(401, "unauthorized", "no token: send 'Authorization: Bearer <token>' "
                       "(CORRAL_TOKEN for the CLI)")
    try:
        if scheme.lower() != "bearer":
            raise TokenRefused("not a bearer token")
        token = find(session, secret.strip())
        if token.kind == "sandbox" and token.audience != SANDBOX_AUDIENCE:
            raise TokenRefused(f"token {token.id} is not meant for this server's API", token)
        if token.kind == "user" and token.idp_refresh:
            from corral.server.oidc.recheck import recheck

            recheck(request, session, token)  # the IdP still knows the user, groups follow
    except TokenRefused as err:
        client = request.client.host if request.client else "?"
        record_now(get_db(request), "anonymous", "auth.refused",
                   f"{request.method} {request.url.path}", reason=str(err), client=client,
                   token_id=err.token.id if err.token else None)
        raise ApiError(401, "unauthorized", str(err)) from None
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > dt.timedelta(minutes=1):
        # In a transaction of its own that starts with this write: on SQLite, a transaction
        # that read and then writes fails at once ("database is locked", a 503) when another
        # connection committed in between, where one that starts by writing waits its turn.
        session.commit()
        token.last_used_at = now
        session.commit()
    return principal_for(session, token)


def _refuse(request: Request, session: Session, principal: Principal, err: ApiError) -> NoReturn:
    """Record an authorization refusal in a transaction of its own, then raise it."""
    session.rollback()  # drop last_used_at: its write lock would block the record on SQLite
    record_now(get_db(request), principal.actor, "authz.refused",
               f"{request.method} {request.url.path}", status=err.status, reason=err.message,
               token_id=principal.token_id, kind=principal.kind, run=principal.run_id)
    raise err


@dataclass
class Access:
    principal: Principal
    session: Session
    resource: Any = None


class Resolved:
    """What a resolver found: the resource, the team that owns it, and the run it is (if)."""

    def __init__(self, resource: Any, team_id: int | None, run_id: str | None = None) -> None:
        self.resource, self.team_id, self.run_id = resource, team_id, run_id


Resolver = Callable[[Session, dict[str, Any]], Resolved]


def require(permission: Permission, resolve: Resolver | None = None) -> Any:
    """A dependency that authenticates and authorizes; the route gets an ``Access``."""

    def dependency(request: Request, session: Session = Depends(get_session)) -> Access:
        principal = _authenticate(request, session)
        if permission.spec.scope == "run" and principal.kind == "sandbox" and \
                request.path_params.get("run") != principal.run_id:
            # Refused before resolving, so the answer says nothing about the other run.
            _refuse(request, session, principal, other_run(principal))
        # A resolver raises 404 for an absent resource; decide raises the same 404 for one
        # outside the principal's teams, so the two look alike (only the second is recorded).
        found = resolve(session, dict(request.path_params)) if resolve is not None else None
        try:
            decide(principal, permission, team_id=found.team_id if found else None,
                   run_id=found.run_id if found else None)
        except ApiError as err:
            _refuse(request, session, principal, err)
        return Access(principal, session, found.resource if found else None)

    dependency.corral_permission = permission  # type: ignore[attr-defined]
    return Depends(dependency)
