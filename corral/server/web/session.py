"""Web sessions: an opaque id in a cookie, the session a row, CSRF bound to the session.

Invariants:
- The cookie holds 32 random bytes; the row holds only sha256 of them, so a database read
  does not yield a usable session. Any replica serves any session.
- The cookie is ``HttpOnly``, ``SameSite=Lax``, ``Path=/`` with no ``Domain`` (host-only);
  behind TLS (``public_url`` is https) it is ``Secure`` and named ``__Host-corral_session``,
  which browsers refuse to accept from a sibling host or another path.
- A session ends at ``IDLE`` without use or ``ABSOLUTE`` after login, whichever is first, and
  at logout, which revokes the row (a copied cookie is dead too).
- Every login makes a new session id (``start``), revoking any session the browser presented:
  an id planted before login is never the one that gets authenticated.
- The CSRF token is sha256 of ("csrf", session id): only a holder of the cookie can know it;
  every state-changing request by cookie must carry it (form field ``csrf`` or header
  ``X-CSRF-Token``).
- A fresh session (``STEP_UP`` after login) counts as step-up for the API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from fastapi import Request, Response
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.server.authz import Principal
from corral.server.config import ServerConfig
from corral.server.errors import ApiError
from corral.server.models import User, WebSession, utcnow

__all__ = ["ABSOLUTE", "IDLE", "STEP_UP", "Current", "api_principal", "cookie_name", "csrf_ok",
           "csrf_token", "current", "end", "end_all", "start"]

IDLE = dt.timedelta(hours=2)
ABSOLUTE = dt.timedelta(hours=12)
STEP_UP = dt.timedelta(minutes=10)
TOUCH_EVERY = dt.timedelta(minutes=1)


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def csrf_token(sid: str) -> str:
    return _hash("csrf\0" + sid)


def secure(config: ServerConfig) -> bool:
    return config.base_url().startswith("https://")


def cookie_name(config: ServerConfig) -> str:
    return "__Host-corral_session" if secure(config) else "corral_session"


class Current:
    """The signed-in browser: its session row, user and CSRF token."""

    def __init__(self, row: WebSession, user: User, sid: str) -> None:
        self.row, self.user, self.sid = row, user, sid
        self.csrf = csrf_token(sid)

    @property
    def step_up(self) -> bool:
        return self.row.step_up_until is not None and utcnow() < self.row.step_up_until


def _sid(request: Request) -> str | None:
    config: ServerConfig = request.app.state.config
    return request.cookies.get(cookie_name(config))


def current(request: Request, session: Session) -> Current | None:
    """The live session the request's cookie names, or ``None``."""
    sid = _sid(request)
    if not sid or len(sid) > 100:
        return None
    row = session.scalars(select(WebSession).where(WebSession.id_hash == _hash(sid))).first()
    now = utcnow()
    if row is None or row.revoked_at is not None or row.expires_at <= now \
            or row.last_seen_at + IDLE <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    if now - row.last_seen_at > TOUCH_EVERY:
        row.last_seen_at = now
    return Current(row, user, sid)


def csrf_ok(current: Current, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), current.csrf.encode())


def start(request: Request, response: Response, session: Session, user: User) -> Current:
    """A new session for ``user`` (never the id the browser came with), cookie set."""
    old = _sid(request)
    if old:
        session.execute(update(WebSession).where(WebSession.id_hash == _hash(old))
                        .values(revoked_at=utcnow()))
    sid = secrets.token_urlsafe(32)
    now = utcnow()
    row = WebSession(id_hash=_hash(sid), csrf_hash=_hash(csrf_token(sid)), user_id=user.id,
                     created_at=now, last_seen_at=now, expires_at=now + ABSOLUTE,
                     step_up_until=now + STEP_UP)
    session.add(row)
    session.flush()
    config: ServerConfig = request.app.state.config
    response.set_cookie(cookie_name(config), sid, max_age=int(ABSOLUTE.total_seconds()),
                        path="/", secure=secure(config), httponly=True, samesite="lax")
    return Current(row, user, sid)


def end(request: Request, response: Response, current: Current) -> None:
    current.row.revoked_at = utcnow()
    config: ServerConfig = request.app.state.config
    response.delete_cookie(cookie_name(config), path="/", secure=secure(config),
                           httponly=True, samesite="lax")


def end_all(session: Session, user_id: int) -> None:
    session.execute(update(WebSession).where(WebSession.user_id == user_id,
                                             WebSession.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def api_principal(request: Request, session: Session) -> Principal | None:
    """The API principal of a signed-in browser, or ``None`` without a live session.

    A state-changing request must carry the session's CSRF token in ``X-CSRF-Token``: a
    cross-site form or fetch rides on the cookie but cannot know the token.
    """
    from corral.server.api.deps import user_principal

    found = current(request, session)
    if found is None:
        return None
    if request.method not in SAFE_METHODS and \
            not csrf_ok(found, request.headers.get("x-csrf-token")):
        raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token for this session")
    return user_principal(session, found.user, token_id=None, step_up=found.step_up)
