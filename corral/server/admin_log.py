"""The server's own audit: every admin change and every refused credential is a row.

Invariants: the detail never holds a secret (token secrets and credential values are never
passed here; callers give names and ids); a refusal is recorded in its own transaction, so it
stays recorded although the request it refused is rolled back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from corral.server.db import Database
from corral.server.models import AdminEvent

__all__ = ["record", "record_now"]


def record(session: Session, actor: str, action: str, target: str, *,
           team_id: int | None = None, **detail: Any) -> None:
    """Add an admin event to ``session`` (committed with the change it describes)."""
    session.add(AdminEvent(actor=actor, action=action, target=target, team_id=team_id,
                           detail=detail))


def record_now(db: Database, actor: str, action: str, target: str, **detail: Any) -> None:
    """Record in a transaction of its own (refusals: the request's own is rolled back)."""
    with db.session() as session:
        record(session, actor, action, target, **detail)
