"""The ``/api/v1`` routers. ``ROUTERS`` is every router the app mounts."""

from __future__ import annotations

from corral.server.api import (
    approvals,
    audit,
    budgets,
    callers,
    credentials,
    logins,
    me,
    policies,
    projects,
    runs,
    teams,
)

__all__ = ["ROUTERS"]

ROUTERS = [me.router, teams.router, projects.router, policies.router, credentials.router,
           runs.router, audit.router, approvals.router, logins.router, budgets.router,
           callers.router]
