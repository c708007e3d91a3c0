"""The control plane's SQLAlchemy 2 models; every table of every control-plane issue.

``Base.metadata`` is what the Alembic migrations are checked against (a test compares them).
"""

from __future__ import annotations

from corral.server.models.base import Base, UtcDateTime, utcnow
from corral.server.models.identity import Membership, Org, Team, Token, User, WebSession
from corral.server.models.projects import (
    Agent,
    Credential,
    PolicyAttachment,
    PolicyVersion,
    Project,
)
from corral.server.models.runs import (
    AdminEvent,
    Approval,
    AuditEvent,
    LedgerEntry,
    Run,
    StandingApproval,
)
from corral.server.models.spend import Budget, SpendRow
from corral.server.models.sso import LoginAttempt, LoginFlow

__all__ = [
    "AdminEvent",
    "Agent",
    "Approval",
    "AuditEvent",
    "Base",
    "Budget",
    "Credential",
    "LedgerEntry",
    "LoginAttempt",
    "LoginFlow",
    "Membership",
    "Org",
    "PolicyAttachment",
    "PolicyVersion",
    "Project",
    "Run",
    "SpendRow",
    "StandingApproval",
    "Team",
    "Token",
    "User",
    "UtcDateTime",
    "WebSession",
    "utcnow",
]
