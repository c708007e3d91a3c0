"""Streamable HTTP for ``corral mcp --http``: bearer tokens and an Origin allowlist in front.

Invariants:
- Every HTTP request must carry ``Authorization: Bearer <token>`` matching a configured token
  (or, with ``--project``, one the server vouches for), or it is answered 401 before the MCP
  SDK sees it. There is no unauthenticated mode.
- A request carrying an ``Origin`` header is refused (403) unless the origin is allowlisted
  (default: http(s) origins on localhost, 127.0.0.1 and [::1], any port), so a web page in a
  browser cannot drive the server (DNS rebinding, CSRF). Requests without Origin (non-browser
  clients) pass this check but still need the token.
- The listening socket is bound before the URL is announced, so ``--http 127.0.0.1:0`` works.
"""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import anyio.to_thread
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from corral.mcp.principals import Authenticator
from corral.render import no_color

__all__ = ["Guard", "bind", "origin_allowed", "serve_http"]

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
ASGIApp = Callable[..., Any]


def origin_allowed(origin: str, allowlist: Iterable[str]) -> bool:
    allowed = {o.rstrip("/").lower() for o in allowlist}
    origin = origin.rstrip("/").lower()
    if origin in allowed:
        return True
    if allowed:
        return False
    parts = urllib.parse.urlsplit(origin)
    return parts.scheme in ("http", "https") and (parts.hostname or "") in _LOCAL_HOSTS


class Guard:
    """ASGI middleware: token and Origin checks in front of the MCP app."""

    def __init__(self, app: ASGIApp, tokens: Authenticator,
                 origins: Iterable[str] = ()) -> None:
        self.app = app
        self.tokens = tokens
        self.origins = tuple(origins)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, self.origins):
            await _refuse(send, 403, f"origin {origin} is not allowed (corral mcp --allow-origin)")
            return
        # off the event loop: a server-vouched token may need a round trip to corral server
        who = await anyio.to_thread.run_sync(self.tokens.principal, headers.get("authorization"))
        if who is None:
            await _refuse(send, 401, "a valid bearer token is required", bearer=True)
            return
        await self.app(scope, receive, send)


async def _refuse(send: Any, status: int, message: str, *, bearer: bool = False) -> None:
    body = (message + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode())]
    if bearer:
        headers.append((b"www-authenticate", b'Bearer realm="corral"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


async def serve_http(
    server: MCPServer,
    sock: socket.socket,
    tokens: Authenticator,
    origins: Iterable[str] = (),
) -> None:
    host = sock.getsockname()[0]
    origins = tuple(origins)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=False,  # the Guard does the Origin check, for all hosts
    )
    app = server.streamable_http_app(host=host, transport_security=security)
    guarded = Guard(app, tokens, origins)
    config = uvicorn.Config(guarded, log_level="warning", lifespan="on", access_log=False,
                            use_colors=False if no_color() else None)
    await uvicorn.Server(config).serve(sockets=[sock])
