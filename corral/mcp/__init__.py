"""The MCP server that exposes corral's sandboxed tools to outside agents (Mode 1).

Public API::

    from corral.mcp import build_server, Principals, TokenTable
    server = build_server(Principals(factory), tokens=TokenTable({"alice": tok}))

``corral mcp`` (``corral.cli.mcp``) is the command that builds and serves it.
"""

from __future__ import annotations

from corral.mcp.principals import STDIO, Principals, TokenTable
from corral.mcp.server import ApprovalForm, build_server

__all__ = ["STDIO", "ApprovalForm", "Principals", "TokenTable", "build_server"]
