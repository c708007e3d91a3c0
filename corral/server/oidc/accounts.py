"""From verified ID-token claims to a corral user, its IdP memberships and its login token.

Invariants:
- A user is found by the IdP subject; a user an admin added by email before their first
  login is linked on that login only if the IdP does not say the email is unverified, and a
  user already linked to another subject is never taken over through an equal email.
- A disabled user cannot sign in (403), whatever the IdP says.
- Memberships from the IdP (``source='idp'``) are exactly what the current groups claim maps
  to (``group_map``, else a group equal to a team's name gives ``member``): a group the user
  lost removes its membership at this login; memberships an admin set by hand are left alone.
- A login token is a ``user`` token: opaque and hashed (``tokens.issue``), expiring
  (``LOGIN_TTL``; a step-up token ``STEP_UP_TTL`` and ``step_up``), and holds the IdP's
  refresh token sealed under the KEK so the server can ask the IdP again later (``recheck``).
- Every sign-in, membership change and token issued is an admin event naming the human.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.server.admin_log import record
from corral.server.authz import Role
from corral.server.config import OidcConfig
from corral.server.crypto import Kek, Sealed
from corral.server.errors import ApiError
from corral.server.models import Membership, Team, Token, User, utcnow
from corral.server.tokens import issue

__all__ = ["LOGIN_TTL", "STEP_UP_TTL", "issue_login_token", "open_refresh", "seal_refresh",
           "sign_in", "sync_groups"]

LOGIN_TTL = dt.timedelta(days=7)
STEP_UP_TTL = dt.timedelta(minutes=10)


def sign_in(session: Session, cfg: OidcConfig, claims: dict[str, Any]) -> User:
    sub = str(claims["sub"])
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise ApiError(403, "no_email", "the identity provider gave no email for this user; "
                       "corral names every human by email (request the 'email' scope)")
    user = session.scalars(select(User).where(User.idp_subject == sub)).first()
    if user is None:
        user = session.scalars(select(User).where(User.email == email)).first()
        if user is not None and (user.idp_subject is not None
                                 or claims.get("email_verified") is False):
            raise ApiError(403, "email_taken", f"{email} belongs to another corral user")
        if user is None:
            user = User(email=email)
            session.add(user)
        user.idp_subject = sub
    if user.disabled:
        raise ApiError(403, "user_disabled", f"{user.email} is disabled in corral")
    user.email = email
    if isinstance(claims.get("name"), str):
        user.name = claims["name"][:200]
    user.last_seen_at = utcnow()
    session.flush()
    sync_groups(session, cfg, user, claims)
    record(session, user.email, "user.login", user.email, subject=sub)
    return user


def _wanted(session: Session, cfg: OidcConfig, groups: list[str]) -> dict[int, Role]:
    teams = {name: tid for tid, name in session.execute(select(Team.id, Team.name))}
    wanted: dict[int, Role] = {}
    for group in groups:
        mapped = cfg.group_map.get(group)
        pairs = mapped.items() if mapped is not None else [(group, "member")]
        for team, role in pairs:
            if team in teams:
                tid = teams[team]
                wanted[tid] = max(wanted.get(tid, Role.VIEWER), Role.parse(role))
    return wanted


def sync_groups(session: Session, cfg: OidcConfig, user: User, claims: dict[str, Any]) -> None:
    raw = claims.get(cfg.groups_claim)
    groups = [g for g in raw if isinstance(g, str)] if isinstance(raw, list) else []
    wanted = _wanted(session, cfg, groups)
    held = {m.team_id: m for m in session.scalars(
        select(Membership).where(Membership.user_id == user.id))}
    for tid, member in held.items():
        if member.source == "idp" and tid not in wanted:
            session.delete(member)
            record(session, user.email, "member.idp_removed", user.email, team_id=tid,
                   role=member.role)
    for tid, role in wanted.items():
        have = held.get(tid)
        if have is None:
            session.add(Membership(team_id=tid, user_id=user.id, role=role.label,
                                   source="idp"))
        elif have.source == "idp" and have.role != role.label:
            have.role = role.label
        else:
            continue
        record(session, user.email, "member.idp_set", user.email, team_id=tid, role=role.label)
    session.flush()


def seal_refresh(kek: Kek, user: User, value: str) -> str:
    sealed = kek.seal(0, f"idp-refresh/{user.id}", value.encode())
    parts = [base64.urlsafe_b64encode(p).decode() for p in sealed[:4]]
    return ".".join([*parts, sealed.kek_id])


def open_refresh(kek: Kek, token: Token) -> str | None:
    """The IdP refresh token held by a login token; ``None`` if none or no longer openable."""
    if not token.idp_refresh or token.user_id is None:
        return None
    try:
        *parts, kek_id = token.idp_refresh.split(".")
        raw = [base64.urlsafe_b64decode(p) for p in parts]
        sealed = Sealed(raw[0], raw[1], raw[2], raw[3], kek_id)
        return kek.open(0, f"idp-refresh/{token.user_id}", sealed).decode()
    except Exception:  # a rotated-away KEK or a damaged value: treated as no refresh token
        return None


def issue_login_token(session: Session, kek: Kek, user: User, *, name: str, step_up: bool,
                      refresh_token: str | None) -> tuple[Token, str]:
    row, secret = issue(session, name=name[:100], kind="user", role="member",
                        ttl=STEP_UP_TTL if step_up else LOGIN_TTL, created_by=user.email,
                        user_id=user.id)
    row.step_up = step_up
    row.idp_checked_at = utcnow()
    if refresh_token and not step_up:
        row.idp_refresh = seal_refresh(kek, user, refresh_token)
    record(session, user.email, "token.login", f"token:{row.id}", step_up=step_up,
           subject=user.idp_subject, expires_at=row.expires_at.isoformat(timespec="seconds"))
    return row, secret
