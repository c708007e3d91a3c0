"""``corral server``: the control plane (teams, projects, policies, credentials, runs, audit).

Public surface: ``create_app`` (the ASGI app), ``ServerConfig``/``load_config``, ``Database``.
Nothing on the ``corral run`` launch path imports this package; it may use ``corral.policy``
and ``corral.audit``, never the sandbox side (an import-linter contract says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.server.app import create_app
    from corral.server.config import ServerConfig, load_config
    from corral.server.db import Database
    from corral.server.http_protocol import HttpProtocol

# ``local`` (tokens and KEK rotation on this host) and ``migrate`` (schema) are public
# submodules: ``corral server``'s CLI calls them.
__all__ = ["Database", "HttpProtocol", "ServerConfig", "create_app", "load_config", "local",
           "migrate"]

__getattr__ = lazy_exports("corral.server", {
    "create_app": "app",
    "ServerConfig": "config",
    "load_config": "config",
    "Database": "db",
    "HttpProtocol": "http_protocol",
})
