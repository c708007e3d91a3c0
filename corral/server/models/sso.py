"""SSO state shared by replicas: pending logins and login attempts (rate limits).

Invariants: a pending login (``LoginFlow``) is found by the sha256 of a secret only its
starter holds (the ``state`` sent to the IdP, a device ``handle`` or a CLI ``code``), lives
minutes, and is consumed once (a deleted row cannot be replayed); ``LoginAttempt`` rows are
what rate limits count, per client address and per IdP subject.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from corral.server.models.base import Base, UtcDateTime, utcnow

__all__ = ["LoginAttempt", "LoginFlow"]


class LoginFlow(Base):
    __tablename__ = "login_flows"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # web | cli | device
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # What the flow carries (nonce, PKCE verifier, next, device code, CLI challenge...).
    data: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)


class LoginAttempt(Base):
    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_key_at", "key", "at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(300))  # client:ADDR | user:SUBJECT
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
