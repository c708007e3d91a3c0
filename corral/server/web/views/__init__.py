"""The web UI's pages, one module per area; ``ROUTERS`` is every one of their routers."""

from __future__ import annotations

from corral.server.web.views import admin, approvals, data, overview, policies, runs, static

__all__ = ["ROUTERS"]

ROUTERS = [static.router, overview.router, runs.router, approvals.router, policies.router,
           admin.router, data.router]
