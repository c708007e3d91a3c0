"""The agent's side of one HTTP/1.1 connection: an h11 server over the client stream.

Everything the proxy reads from or writes to the agent goes through ``AgentConnection``;
``http1.Session`` builds the request loop on top of it.

Invariants:
- Every byte of a request head passes ``request_head.HeadGuard`` (size bound, no obs-fold)
  before h11 parses it.
- Request bodies leave only as h11 ``Data`` events handed to an upstream that re-frames them
  (``relay_body``), chunk by chunk with a drain after each: never buffered, never raw.
- Local answers (400, 403, upstream failures) are complete responses with
  ``Connection: close``; if h11 can no longer send one (a response already started), raw bytes
  are written instead and the connection is not reused.
- A 403 is audited (``proxy.deny``, the same text as the body) before it is written.
- A connection with no request bytes for ``ctx.idle_timeout`` seconds while the proxy waits on
  the agent is closed; one timer per connection, re-armed per period rather than per read.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import h11

from corral.policy.types import Decision
from corral.proxy import deny as deny_response
from corral.proxy.context import ProxyContext
from corral.proxy.request_head import MAX_HEADER_BYTES, BadRequest, HeadGuard, Pinned
from corral.proxy.streams import READ_SIZE, Stream

__all__ = ["AgentConnection", "BodySink"]


class BodySink(Protocol):
    """An upstream that frames a request body it is handed piece by piece."""

    @property
    def stream(self) -> Stream: ...

    def body(self, data: bytes) -> None: ...

    def end(self) -> None: ...


class AgentConnection:
    def __init__(self, ctx: ProxyContext, client: Stream, pinned: Pinned | None = None) -> None:
        self.ctx = ctx
        self.client = client
        self.pinned = pinned
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._guard = HeadGuard()
        self._waiting_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- events in and out -------------------------------------------------------------

    def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.client.write(data)

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.Request):
                    self._guard.reset()
                return event
            self._waiting_since = time.monotonic()
            try:
                data = await self.client.read(READ_SIZE)
            finally:
                self._waiting_since = None
            if self.conn.their_state in (h11.IDLE, h11.DONE):
                self._guard.feed(data)
            self.conn.receive_data(data)

    async def next_body_chunk(self) -> bytes | None:
        """The next piece of the request body, None at its end."""
        event = await self.next_event()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        raise BadRequest("request body ended early")

    async def relay_body(self, up: BodySink) -> None:
        """Stream the request body to ``up`` as it arrives, then end it there."""
        while (chunk := await self.next_body_chunk()) is not None:
            up.body(chunk)
            await up.stream.drain()
        up.end()

    # -- local answers -----------------------------------------------------------------

    async def simple(
        self, status: int, text: str, extra: list[tuple[str, str]] | None = None
    ) -> None:
        body = text.encode()
        headers = extra or [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        try:
            self.send(h11.Response(status_code=status, headers=headers))
            self.send(h11.Data(data=body))
            self.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            # Response already started or state broken: raw bytes, then close.
            self.client.write(
                b"HTTP/1.1 %d Error\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (status, len(body), body)
            )
        await self.client.drain()

    async def deny(self, decision: Decision, what: str, fields: dict[str, Any]) -> None:
        text = deny_response.deny_text(decision, what)
        await self.ctx.audit.emit(
            "proxy.deny", rule=decision.origin, reason=text, status=403, **fields
        )
        body = text.encode()
        await self.simple(403, text, deny_response.response_headers(decision, body))

    async def bad_request(self, err: BaseException) -> None:
        await self.ctx.audit.emit(
            "proxy.deny",
            host=self.pinned.host if self.pinned else "-",
            rule="malformed request",
            status=400,
            reason=str(err)[:300],
        )
        await self.simple(400, f"corral: malformed request rejected: {err}\n")

    # ``connect.handle_connect`` answers through these names.
    _send = send
    _deny = deny
    _bad_request = bad_request

    # -- idle watchdog -----------------------------------------------------------------

    def start_watchdog(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.ctx.idle_timeout, self._watchdog)

    def stop_watchdog(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _watchdog(self) -> None:
        """Close an agent connection idle past the limit (one timer per period, not per read)."""
        since, limit = self._waiting_since, self.ctx.idle_timeout
        now = time.monotonic()
        if since is not None and now - since >= limit:
            self.client.close()
            return
        delay = limit - (now - since) if since is not None else limit
        self._timer = asyncio.get_running_loop().call_later(delay, self._watchdog)
