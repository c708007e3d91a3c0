"""The browser side of ``corral server``: SSO login, web sessions, pages; the CLI's login.

Public surface: ``ROUTERS`` (mounted at the root, outside ``/api/v1``).
"""

from __future__ import annotations

from corral.server.web import cli, login
from corral.server.web.views import ROUTERS as VIEWS

__all__ = ["ROUTERS"]

ROUTERS = [login.router, cli.router, *VIEWS]
