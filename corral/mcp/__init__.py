"""The MCP server that exposes corral's sandboxed tools to outside agents (Mode 1).

Public API::

    from corral.mcp import build_server, Principals, TokenTable
    server = build_server(Principals(factory), tokens=TokenTable({"alice": tok}))

    sock = bind("127.0.0.1", 0)
    await serve_http(server, sock, tokens, origins)      # or server.run_stdio_async()

``corral.runtime.mode1`` assembles it with the tools and sandboxes for ``corral mcp``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports
from corral.mcp.principals import STDIO, Authenticator, Principals, TokenTable
from corral.mcp.server import ApprovalForm, Held, build_server

if TYPE_CHECKING:
    from corral.mcp.http import bind, serve_http

__all__ = [
    "STDIO", "ApprovalForm", "Authenticator", "Held", "Principals", "TokenTable", "bind",
    "build_server", "serve_http",
]

# uvicorn only for --http
__getattr__ = lazy_exports("corral.mcp", {"bind": "http", "serve_http": "http"})
