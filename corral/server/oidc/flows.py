"""Pending logins as rows: made with a secret key, found by its hash, consumed once.

Invariants: a flow is found only by sha256 of a random key its starter holds; ``take``
deletes the row in the same transaction that reads it and checks exactly one row went, so
two replicas (or a replayed callback) cannot both consume it; an expired flow is never
returned, and expired rows are swept when new ones are made.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from corral.server.models import LoginFlow, utcnow

__all__ = ["FLOW_TTL", "digest", "peek", "put", "random_key", "take"]

FLOW_TTL = dt.timedelta(minutes=10)


def random_key() -> str:
    return secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def put(session: Session, kind: str, key: str, data: dict[str, Any],
        ttl: dt.timedelta = FLOW_TTL) -> LoginFlow:
    now = utcnow()
    session.execute(delete(LoginFlow).where(LoginFlow.expires_at < now))
    row = LoginFlow(kind=kind, key_hash=digest(key), data=data, expires_at=now + ttl)
    session.add(row)
    session.flush()
    return row


def peek(session: Session, kinds: tuple[str, ...], key: str) -> LoginFlow | None:
    row = session.scalars(select(LoginFlow).where(LoginFlow.key_hash == digest(key),
                                                  LoginFlow.kind.in_(kinds))).first()
    if row is None or row.expires_at <= utcnow():
        return None
    return row


def take(session: Session, kinds: tuple[str, ...], key: str) -> dict[str, Any] | None:
    """The flow's data (its kind as ``kind``), deleting it; ``None`` when unknown, used or
    expired."""
    row = peek(session, kinds, key)
    if row is None:
        return None
    gone = session.execute(delete(LoginFlow).where(LoginFlow.id == row.id))
    if getattr(gone, "rowcount", 0) != 1:
        return None
    data = {**row.data, "kind": row.kind}
    session.expunge(row)
    return data
