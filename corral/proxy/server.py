"""The accept loop: one task per client connection, explicit or transparently captured.

Invariants:
- A connection whose conntrack original destination differs from the listener's own address
  was redirected by netfilter and is handled as transparent capture; all others speak the
  explicit proxy protocol.
- An unexpected exception in a handler closes that connection (fail closed) and is audited;
  it never takes the server down and never lets bytes through.
- Caps (``Caps``, set per sandbox by the launcher through ``configure``): at most
  ``connections`` client connections are served at once, and the bytes received but not yet
  read by the handlers (the stream readers' buffers) never exceed ``buffered`` in total. A
  connection past the connection cap is refused (reset) after the refusal is audited; one
  pushing the buffers past their cap is reset at once. One ``sandbox.limit`` event per burst
  of refusals, not one per connection: a burst of connection refusals lasts until a
  connection is served again, one of buffer resets until ``BURST_GAP`` s pass without one;
  a burst longer than ``BURST_RENEW`` s gets a further event. A handler's own parser holds
  at most one request head (64 KiB) more per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterable
from typing import SupportsIndex

from corral.proxy.context import ProxyContext
from corral.proxy.http1 import Session
from corral.proxy.streams import RawStream
from corral.proxy.transparent import handle_transparent, original_destination
from corral.proxy.upstream import STREAM_LIMIT

__all__ = ["Caps", "configure", "serve"]

BURST_GAP = 1.0
BURST_RENEW = 60.0


class Caps:
    """What the agent can make the proxy hold at once (its memory), and the refusal bursts."""

    def __init__(self, connections: int = 4096, buffered: int = 512 * 1024**2) -> None:
        self.connections, self.buffered = connections, buffered
        self.open = 0  # connections being served
        self.held = 0  # bytes in the stream readers' buffers, over all connections
        self.refused = 0
        self._bursts: dict[str, tuple[float, float, asyncio.Future[None]]] = {}
        self._calm: set[str] = set()  # limits whose burst ended

    def calm(self, limit: str) -> None:
        """The burst of ``limit`` is over (a connection is served again)."""
        if limit in self._bursts:
            self._calm.add(limit)

    def refusal(self, ctx: ProxyContext, limit: str, value: int, detail: str
                ) -> asyncio.Future[None]:
        """The audit of this refusal's burst (emitted by its first refusal, shared by the
        rest: one event per burst, and each refusal may wait for it to be durable)."""
        self.refused += 1
        now = time.monotonic()
        started, last, fut = self._bursts.get(limit, (0.0, 0.0, None))
        if (fut is None or limit in self._calm or now - started > BURST_RENEW
                or (limit != "proxy.connections" and now - last > BURST_GAP)):
            self._calm.discard(limit)
            started = now
            fut = asyncio.ensure_future(ctx.audit.emit(
                "sandbox.limit", limit=limit, value=str(value), detail=detail))
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._bursts[limit] = (started, now, fut)
        return fut


_caps = Caps()


def configure(connections: int, buffered: int) -> None:
    """The caps of this process's proxy (the proxy child: before it serves)."""
    global _caps
    _caps = Caps(max(1, int(connections)), max(STREAM_LIMIT, int(buffered)))


class _CappedReader(asyncio.StreamReader):
    """A ``StreamReader`` whose unread bytes count towards ``Caps.buffered``."""

    def __init__(self, caps: Caps, ctx: ProxyContext, limit: int) -> None:
        super().__init__(limit=limit)
        self._caps, self._ctx, self._counted = caps, ctx, 0

    def _account(self) -> None:
        now = len(self._buffer)  # type: ignore[attr-defined]
        self._caps.held += now - self._counted
        self._counted = now

    def forget(self) -> None:
        self._caps.held -= self._counted
        self._counted = 0

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        super().feed_data(data)
        self._account()
        caps = self._caps
        if caps.held > caps.buffered:
            self._buffer.clear()  # type: ignore[attr-defined]
            self.forget()
            self.set_exception(ConnectionResetError("proxy buffer cap reached"))
            transport = self._transport  # type: ignore[attr-defined]
            if transport is not None:
                transport.abort()
            caps.refusal(self._ctx, "proxy.buffered", caps.buffered,
                         f"connection reset: {caps.buffered} bytes buffered for clients")

    async def read(self, n: int = -1) -> bytes:
        try:
            return await super().read(n)
        finally:
            self._account()

    async def readexactly(self, n: int) -> bytes:
        try:
            return await super().readexactly(n)
        finally:
            self._account()

    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        try:
            return await super().readuntil(separator)
        finally:
            self._account()


async def _client(
    ctx: ProxyContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    caps: Caps | None = None,
) -> None:
    if caps is not None and caps.open >= caps.connections:
        with contextlib.suppress(Exception):  # refused whether or not the audit succeeded
            await caps.refusal(ctx, "proxy.connections", caps.connections,
                               f"connection refused: {caps.open} open (cap {caps.connections})")
        writer.transport.abort()
        if isinstance(reader, _CappedReader):
            reader.forget()
        return
    if caps is not None:
        caps.open += 1
        caps.calm("proxy.connections")
    try:
        await _serve_client(ctx, reader, writer)
    finally:
        if caps is not None:
            caps.open -= 1
        if isinstance(reader, _CappedReader):
            reader.forget()


async def _serve_client(
    ctx: ProxyContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    stream = RawStream(reader, writer)
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        original = original_destination(sock) if sock is not None else None
        if original is not None:
            await handle_transparent(ctx, stream, *original)
        else:
            await Session(ctx, stream).run()
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
        pass
    except asyncio.CancelledError:
        return  # the proxy is stopping: the connection just ends
    except Exception as err:  # fail closed: drop the connection, keep serving others
        with contextlib.suppress(Exception):
            await ctx.audit.emit(
                "error", component="proxy", message=f"{type(err).__name__}: {err}"[:300]
            )
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(ctx: ProxyContext, listen_socks: list[socket.socket]) -> list[asyncio.Server]:
    servers = []
    caps = _caps
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.StreamReaderProtocol:  # asyncio.start_server's, capped reader
        reader = _CappedReader(caps, ctx, STREAM_LIMIT)
        return asyncio.StreamReaderProtocol(reader, lambda r, w: _client(ctx, r, w, caps))

    for sock in listen_socks:
        sock.setblocking(False)
        servers.append(await loop.create_server(protocol, sock=sock))
    return servers
