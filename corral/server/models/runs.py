"""When: runs, their central audit trail, the ledger of anchored heads, held approvals, and
the server's own admin events.

Invariants:
- ``audit_events`` is unique on (run, seq): a batch shipped twice adds nothing. ``hash`` and
  ``prev`` are corral's own audit hashes, recomputed on ingest (never trusted from the sender).
- ``ledger`` is append-only and chained (``prev`` -> ``hash``), one row per anchored head.
- Every admin change (policy, credential, membership, budget, token, approval, kill) and every
  refused token or audit batch is an ``admin_events`` row.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from corral.server.models.base import Base, UtcDateTime, utcnow

__all__ = ["AdminEvent", "Approval", "AuditEvent", "LedgerEntry", "Run", "StandingApproval"]


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_project_started", "project_id", "started_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    human: Mapped[str] = mapped_column(String(320))
    host: Mapped[str] = mapped_column(String(255))
    sandbox: Mapped[str] = mapped_column(String(128))
    policy_digest: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|ended|lost
    exit_status: Mapped[int | None]
    command: Mapped[list[str] | None] = mapped_column(JSON)
    end_reason: Mapped[str | None] = mapped_column(String(500))
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    last_heartbeat_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    kill_requested: Mapped[bool] = mapped_column(default=False)
    kill_reason: Mapped[str | None] = mapped_column(String(500))
    kill_requested_by: Mapped[str | None] = mapped_column(String(200))
    events: Mapped[int] = mapped_column(default=0)
    head: Mapped[str] = mapped_column(String(64), default="0" * 64)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        Index("ix_audit_events_project_ts", "project_id", "ts_us"),
    )
    # BIGINT on PostgreSQL; INTEGER on SQLite, where only that is an autoincrementing rowid
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"),
                                    primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    seq: Mapped[int]
    ts_us: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(Text)  # canonical JSON, as hashed
    data: Mapped[str] = mapped_column(Text)  # canonical JSON, as hashed
    v: Mapped[int]
    prev: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class LedgerEntry(Base):
    __tablename__ = "ledger"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int]
    head: Mapped[str] = mapped_column(String(64))
    prev: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Approval(Base):
    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_run_status", "run_id", "status"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    tool: Mapped[str] = mapped_column(String(200))
    args: Mapped[dict[str, object]] = mapped_column(JSON)
    rule: Mapped[str | None] = mapped_column(String(500))
    # pending | approved | denied | expired
    status: Mapped[str] = mapped_column(String(16), default="pending")
    requested_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(320))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    reason: Mapped[str | None] = mapped_column(String(500))
    # "approve always": the decision also made a ``StandingApproval`` for later identical calls
    always: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # sha256 of what "always" covers: the command for exec, the canonical arguments otherwise
    scope_digest: Mapped[str | None] = mapped_column(String(64))
    # the MCP caller the call was made for (a user's email or token:NAME), when known
    caller: Mapped[str | None] = mapped_column(String(320))


class StandingApproval(Base):
    """An "approve always": a later call of the project with the same agent, tool, scope and
    policy digest is approved without asking (as the local store's ``always_rules``)."""

    __tablename__ = "standing_approvals"
    __table_args__ = (Index("ix_standing_lookup", "project_id", "tool", "scope_digest"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    # CASCADE, not SET NULL: an agent's standing approval must never widen to agentless runs
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    tool: Mapped[str] = mapped_column(String(200))
    scope_digest: Mapped[str] = mapped_column(String(64))
    policy_digest: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(String(500))
    approval_id: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class AdminEvent(Base):
    __tablename__ = "admin_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(500))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    detail: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
