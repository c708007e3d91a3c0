"""``action: platform`` in the proxy: a decided request streamed to corral server's relay.

The proxy terminates TLS and decides as for ``inspect`` (``http1``); a request whose decision
is ``platform`` comes here instead of ``forward``: it goes, as the protocol of
``relay_wire`` says, to the server the run is registered with, which injects the credential
and carries it upstream. The run's relay address and sandbox token arrive from the launcher
after the run registered (``PlatformRelay.configure``, over the proxy's control socket).

Invariants:
- No credential is ever injected here and no upstream is dialled for a platform request: the
  only connection it opens is to the relay. The proxy never holds a ``server:`` secret.
- The agent's body streams to the relay chunk by chunk and the response streams back as it
  arrives (an SSE event reaches the agent when the relay sends it).
- No relay (the run is not registered, the server cannot be reached, it answers as no relay
  does) is a 502 naming the cause; the relay's refusals reach the agent as 403 (policy,
  token) or 502/504 (upstream) with the relay's message. There is no fallback.
- corral's own answer to a metered request (``corral-relay: reply``: a budget exhausted, an
  unpriced endpoint, in the provider's error shape) reaches the agent as is and is audited as
  ``proxy.deny`` with its message, as the local metered path answers.
- The relay's answer is parsed by llhttp (``upstream_http.FastUpstream``, as an ``inspect``
  upstream's): the relay never answers a HEAD (a HEAD's length travels as
  ``corral-relay-content-length``) nor switches protocols, the two things llhttp cannot carry.
  A relay connection is reused only after a complete exchange llhttp says may keep alive, and
  a pooled one the server has closed meanwhile is dropped, not used.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from corral.policy.types import Decision
from corral.proxy import relay_wire as wire
from corral.proxy.agent import AgentConnection
from corral.proxy.agent_parser import Request
from corral.proxy.headers import forward_headers, request_headers
from corral.proxy.lookup import Refused
from corral.proxy.request_head import Target
from corral.proxy.respond import allow_kind
from corral.proxy.streams import RawStream
from corral.proxy.upstream import UpstreamError, dial
from corral.proxy.upstream_http import FastUpstream

__all__ = ["PlatformRelay", "relay"]

WAIT_FOR_RELAY = 15.0  # the launcher registers the run as the agent starts
MAX_ERROR_BODY = 64 * 1024


class PlatformRelay:
    """Where this run's platform requests go, once the launcher says so; its connections."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.token: str | None = None
        self.run: str | None = None
        self.unavailable: str | None = None
        self._known: asyncio.Event | None = None
        self._idle: list[FastUpstream] = []
        self._tls: ssl.SSLContext | None = None
        self.control: asyncio.Task[None] | None = None  # reads the launcher's configure frames

    def _event(self) -> asyncio.Event:
        if self._known is None:
            self._known = asyncio.Event()
        return self._known

    def configure(self, info: dict[str, Any]) -> None:
        """``{"url", "token", "run"}`` of the registered run, or ``{"unavailable": why}``."""
        if info.get("unavailable"):
            self.unavailable = str(info["unavailable"])
        else:
            self.url, self.token, self.run = str(info["url"]), str(info["token"]), str(info["run"])
        self._event().set()

    async def ready(self) -> None:
        if self.url is None and self.unavailable is None:
            try:
                async with asyncio.timeout(WAIT_FOR_RELAY):
                    await self._event().wait()
            except TimeoutError:
                raise UpstreamError(502, "this run has no corral server relay (it is not "
                                    "registered with a server: run it with --project)") from None
        if self.unavailable is not None:
            raise UpstreamError(502, self.unavailable)

    async def connection(self) -> FastUpstream:
        while self._idle:
            up = self._idle.pop()
            if up.idle and not _closed(up):
                return up
            up.stream.close()
        assert self.url is not None
        parts = urlsplit(self.url)
        tls = None
        if parts.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        host = parts.hostname or ""
        port = parts.port or (443 if tls is not None else 80)
        try:
            stream = await dial(host, host, port, tls=tls)
        except UpstreamError as err:
            raise UpstreamError(502, f"corral server {self.url} is unreachable ({err.reason}); "
                                "a platform request is never sent any other way") from None
        return FastUpstream(stream)

    def put(self, up: FastUpstream) -> None:
        if up.reusable() and len(self._idle) < 32:
            self._idle.append(up)
        else:
            up.stream.close()


async def relay(agent: AgentConnection, req: Request, decision: Decision, target: Target,
                fields: dict[str, Any], started: float) -> bool:
    """Carry one platform request through the relay; True if the agent connection may go on.
    Raises ``UpstreamError`` (answered by ``http1``) when no response has started."""
    platform: PlatformRelay = agent.ctx.platform
    await platform.ready()
    headers, asks_upgrade, _expect = request_headers(req.headers, target.authority.encode())
    if asks_upgrade:
        raise Refused("a platform rule does not carry protocol upgrades")
    headers = [(n, v) for n, v in headers if n != b"expect"]
    preamble = wire.encode_preamble(fields["method"], target.host, target.port,
                                    target.origin, headers, target.tls)
    up = await platform.connection()
    try:
        up.start(b"POST", f"{wire.PATH}{platform.run}".encode(),
                 [(b"host", _host(platform.url or "")),
                  (b"authorization", f"Bearer {platform.token}".encode()),
                  (b"content-type", wire.CONTENT_TYPE), (b"transfer-encoding", b"chunked")])
        up.body(preamble)
        if agent.waiting_for_100_continue:
            agent.response.informational(100, [])
            await agent.client.drain()
        await agent.relay_body(up)
        await up.stream.drain()
        return await _response(agent, platform, up, decision, fields, started)
    except BaseException:
        up.stream.close()
        raise


class _Head(NamedTuple):
    """The relay's response head, as llhttp handed it over (names lowercased)."""
    status_code: int
    headers: list[tuple[bytes, bytes]]
    reason: bytes


async def _next(up: FastUpstream, timeout: float, before_read: Any = None) -> tuple[Any, ...]:
    try:
        return await up.next_event(timeout, before_read)
    except UpstreamError as err:  # say which hop failed: the agent's upstream is not dialled
        raise UpstreamError(err.status, f"corral server's relay: {err.reason}") from None


async def _response(agent: AgentConnection, platform: PlatformRelay, up: FastUpstream,
                    decision: Decision, fields: dict[str, Any], started: float) -> bool:
    while True:
        event = await _next(up, agent.ctx.idle_timeout, agent.client)
        kind = event[0]
        if kind == "head":
            head = _Head(event[1], event[2], event[3])
            if head.status_code < 200:
                continue  # an interim answer (100 Continue): the agent had its own
            marks = {n: v for n, v in head.headers if n.startswith(wire.MARK)}
            if marks.get(wire.MARK) == wire.REPLY:
                return await _reply(agent, platform, up, head, decision, fields)
            if marks.get(wire.MARK) != b"upstream":
                raise await _refusal(up, head, marks.get(wire.ERROR))
            await _head(agent, head, decision, fields, started)
        elif kind == "data":
            agent.response.data(event[1])
        else:
            agent.response.end()
            await agent.client.drain()
            platform.put(up)
            return True


async def _head(agent: AgentConnection, event: _Head, decision: Decision,
                fields: dict[str, Any], started: float) -> None:
    headers = wire.restore(forward_headers(event.headers, False))
    length = next((v for n, v in headers if n == b"content-length"), None)
    await agent.ctx.audit.emit(
        allow_kind(decision), rule=decision.origin, status=event.status_code, mode="platform",
        bytes_in=int(length) if length is not None and length.isdigit() else None,
        duration_ms=round((time.monotonic() - started) * 1000, 3), **fields)
    agent.response.head(event.status_code, headers, event.reason)


async def _reply(agent: AgentConnection, platform: PlatformRelay, up: FastUpstream,
                 event: _Head, decision: Decision, fields: dict[str, Any]) -> bool:
    """Pass corral's provider-shaped answer (small, whole) to the agent; audit a deny."""
    body, done = b"", False
    while len(body) < MAX_ERROR_BODY:
        item = await _next(up, 30.0)
        if item[0] == "end":
            done = True
            break
        if item[0] != "data":
            break
        body += item[1]
    if not done:
        raise UpstreamError(502, "corral server's metered answer was cut short")
    await agent.ctx.audit.emit("proxy.deny", rule=decision.origin, status=event.status_code,
                               mode="platform", reason=body.decode("utf-8", "replace")[:300],
                               **fields)
    headers = [(n, v) for n, v in forward_headers(event.headers, False)
               if not n.startswith(wire.MARK) and n != b"content-length"]
    agent.response.head(event.status_code, [*headers, (b"content-length",
                                                       str(len(body)).encode())], b"")
    agent.response.data(body)
    agent.response.end()
    await agent.client.drain()
    platform.put(up)
    return True


async def _refusal(up: FastUpstream, event: _Head, code: bytes | None
                   ) -> UpstreamError | Refused:
    """The relay's own refusal (or an answer no relay gives) as the error the agent sees."""
    body = b""
    while len(body) < MAX_ERROR_BODY:
        try:
            item = await up.next_event(30.0)
        except UpstreamError:
            break  # the message is what arrived: the connection is closed below anyway
        if item[0] != "data":
            break
        body += item[1]
    up.stream.close()
    if code is None:
        return UpstreamError(502, f"corral server answered {event.status_code} without relaying "
                             "(is the server URL right, and the server recent enough?)")
    try:
        message = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = body[:300].decode("utf-8", "replace")
    text = f"corral server's relay refused ({code.decode('latin-1')}): {message}"
    if event.status_code in (400, 401, 403, 404):
        return Refused(text)  # answered as a deny (403), audited as proxy.deny
    return UpstreamError(504 if event.status_code == 504 else 502, text)


def _closed(up: FastUpstream) -> bool:
    """The server ended this idle connection (its keep-alive timeout): not to be reused."""
    stream = up.stream
    return isinstance(stream, RawStream) and (stream.reader.at_eof() or stream.writer.is_closing())


def _host(url: str) -> bytes:
    return (urlsplit(url).netloc or "corral-server").encode()
