"""Money: budgets on org, team, project, agent or run, and spend rows (reservations and
settled costs), for the spend issue.

Invariants: amounts are integer micro-dollars (no float rounding in a ledger); a budget names
exactly one scope; a spend row starts ``reserved`` with its worst-case cost and becomes
``settled`` with the metered cost (or the whole reservation when usage never arrived,
``flagged``). A reservation not renewed in time is charged in full by expiry (``expired_at``,
state ``settled``, ``settled_at`` still empty), so a late settle can still correct it once;
``settled_at`` is set by the one settle that counts.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, false
from sqlalchemy.orm import Mapped, mapped_column

from corral.server.models.base import Base, UtcDateTime, utcnow

__all__ = ["Budget", "SpendRow"]


class Budget(Base):
    __tablename__ = "budgets"
    __table_args__ = (
        CheckConstraint("scope IN ('org', 'team', 'project', 'agent', 'run')", name="scope"),
        CheckConstraint("period IN ('run', 'day', 'week', 'month')", name="period"),
        CheckConstraint("amount_micro_usd >= 0", name="amount"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(8))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[str] = mapped_column(String(8))
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class SpendRow(Base):
    __tablename__ = "spend"
    __table_args__ = (
        Index("ix_spend_project_at", "project_id", "at"),
        Index("ix_spend_at", "at"),
        Index("ix_spend_state_renewed", "state", "renewed_at"),
        CheckConstraint("state IN ('reserved', 'settled')", name="state"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_micro_usd: Mapped[int] = mapped_column(BigInteger)
    cost_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(8), default="reserved")
    priced_as: Mapped[str | None] = mapped_column(String(200))  # set when the model was unknown
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    renewed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    settled_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    expired_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    flagged: Mapped[bool] = mapped_column(default=False, server_default=false())
