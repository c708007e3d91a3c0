"""Login rate limits, per client address and per IdP subject, counted in the database.

Invariants: every login start counts against its client address and every completed login
against its subject; over ``LIMITS`` in the window the attempt is refused with 429 before any
IdP round trip or token is made; counts live in rows, so replicas share them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from corral.server.errors import ApiError
from corral.server.models import LoginAttempt, utcnow

__all__ = ["LIMITS", "WINDOW", "count"]

WINDOW = dt.timedelta(minutes=5)
LIMITS = {"client": 30, "user": 10}


def count(session: Session, kind: str, who: str) -> None:
    """Record one attempt by ``who``; ``ApiError`` 429 when over the limit."""
    now = utcnow()
    key = f"{kind}:{who}"[:300]
    session.execute(delete(LoginAttempt).where(LoginAttempt.at < now - WINDOW * 2))
    seen = session.scalar(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.key == key, LoginAttempt.at > now - WINDOW)) or 0
    if seen >= LIMITS[kind]:
        raise ApiError(429, "too_many_logins",
                       f"too many login attempts from this {kind}; wait a few minutes")
    session.add(LoginAttempt(key=key, at=now))
    session.flush()
