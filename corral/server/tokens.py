"""Opaque bearer tokens: issue, look up, revoke.

Invariants:
- A token is ``crl_`` + 43 base64url characters (32 random bytes); only ``sha256`` of it is
  stored, and lookups compare hashes (constant time is moot: the lookup key is a hash of a
  high-entropy secret an attacker does not know).
- ``authenticate`` refuses an unknown, expired or revoked token with a reason meant for the
  caller (``TokenRefused``), and a token of a disabled user; it never says whether an unknown
  token ever existed.
- A sandbox token (issued at run registration) carries its run and the audience
  ``SANDBOX_AUDIENCE``; it lives ``SANDBOX_TTL`` past the last heartbeat and is revoked when
  its run ends, so a replay after the end is refused saying so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.errors import CorralError
from corral.server.models import Token, User, utcnow

__all__ = ["SANDBOX_AUDIENCE", "SANDBOX_TTL", "TOKEN_RE", "TokenRefused", "find", "hash_token",
           "issue", "new_secret"]

TOKEN_RE = re.compile(r"crl_[A-Za-z0-9_-]{43}")
KINDS = ("service", "user", "sandbox")
# A sandbox token lives this long past the last heartbeat, and only for this audience.
SANDBOX_TTL = dt.timedelta(minutes=15)
SANDBOX_AUDIENCE = "corral-server/run"


class TokenRefused(CorralError):
    def __init__(self, message: str, token: Token | None = None) -> None:
        super().__init__(message)
        self.token = token


def new_secret() -> str:
    return "crl_" + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(session: Session, *, name: str, kind: str, role: str, ttl: dt.timedelta,
          created_by: str, team_id: int | None = None, user_id: int | None = None,
          run_id: str | None = None, audience: str | None = None) -> tuple[Token, str]:
    """Add a token row (caller commits); returns it and the secret, which is shown once."""
    assert kind in KINDS
    secret = new_secret()
    row = Token(name=name, kind=kind, secret_hash=hash_token(secret), role=role,
                team_id=team_id, user_id=user_id, run_id=run_id, audience=audience,
                created_by=created_by, expires_at=utcnow() + ttl)
    session.add(row)
    session.flush()
    return row, secret


def find(session: Session, secret: str) -> Token:
    """The live token for ``secret`` or ``TokenRefused`` saying why not."""
    if not TOKEN_RE.fullmatch(secret):
        raise TokenRefused("malformed token")
    row = session.scalars(select(Token).where(Token.secret_hash == hash_token(secret))).first()
    if row is None:
        raise TokenRefused("unknown token")
    if row.kind == "sandbox" and row.revoked_at is not None:
        raise TokenRefused(f"the sandbox token of run {row.run_id} is dead: the run ended "
                           f"at {row.revoked_at.isoformat(timespec='seconds')}", row)
    if row.revoked_at is not None:
        raise TokenRefused(f"token {row.id} ({row.name}) was revoked", row)
    if row.kind == "sandbox" and row.expires_at <= utcnow():
        raise TokenRefused(f"the sandbox token of run {row.run_id} expired at "
                           f"{row.expires_at.isoformat(timespec='seconds')} (no heartbeat "
                           f"for {SANDBOX_TTL.seconds // 60} min)", row)
    if row.expires_at <= utcnow():
        raise TokenRefused(f"token {row.id} ({row.name}) expired at "
                           f"{row.expires_at.isoformat(timespec='seconds')}", row)
    if row.user_id is not None:
        user = session.get(User, row.user_id)
        if user is None or user.disabled:
            raise TokenRefused(f"token {row.id} belongs to a disabled user", row)
    return row
