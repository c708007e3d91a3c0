"""The agent's side of one HTTP/1.1 connection: requests read by ``agent_parser`` (llhttp for
heads), responses framed by ``agent_writer``, over the client stream.

Everything the proxy reads from or writes to the agent goes through ``AgentConnection``;
``http1.Session`` builds the request loop on top of it.

Invariants:
- Every request head passes ``agent_parser`` (size bound, no obs-fold, strict request line,
  llhttp's token and value checks, Host and Transfer-Encoding rules) before anything uses it;
  whatever it refuses is a 400 and the connection closes.
- Request bodies leave only as ``Data`` pieces handed to an upstream that re-frames them
  (``relay_body``), chunk by chunk with a drain after each: never buffered, never raw.
- Local answers (400, 403, upstream failures) are complete responses with
  ``Connection: close``; if a response already started, raw bytes are written instead and the
  connection is not reused.
- A connection carries another request only after the request was read to its end and a
  complete response was written that keeps the connection alive (``reusable``).
- A 403 is audited (``proxy.deny``, the same text as the body) before it is written.
- A connection with no request bytes for ``ctx.idle_timeout`` seconds while the proxy waits on
  the agent is closed; one timer per connection, re-armed per period rather than per read.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from corral.policy.types import Decision
from corral.proxy import deny as deny_response
from corral.proxy.agent_parser import Closed, Data, End, Request, RequestReader
from corral.proxy.agent_writer import ResponseWriter
from corral.proxy.context import ProxyContext
from corral.proxy.headers import has_control_bytes
from corral.proxy.request_head import BadRequest, Pinned
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
        self.reader = RequestReader()
        self.response = ResponseWriter(client.write)
        self.request: Request | None = None
        self._body_seen = False
        self._waiting_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- requests in -------------------------------------------------------------------

    async def _event(self) -> Request | Data | End | Closed:
        reader = self.reader
        while True:
            event = reader.next_event()
            if event is not None:
                return event
            self._waiting_since = time.monotonic()
            try:
                data = await self.client.read(READ_SIZE)
            finally:
                self._waiting_since = None
            reader.receive(data)

    async def next_request(self) -> Request | None:
        """The next request head, None once the agent closed the connection."""
        event = await self._event()
        if isinstance(event, Request):
            self.request = event
            self._body_seen = False
            self.response.reset(event)
            return event
        return None

    async def next_body_chunk(self) -> bytes | None:
        """The next piece of the request body, None at its end."""
        event = await self._event()
        self._body_seen = True
        if isinstance(event, Data):
            return event.data
        if isinstance(event, End):
            return None
        raise BadRequest("request body ended early")

    async def relay_body(self, up: BodySink) -> None:
        """Stream the request body to ``up`` as it arrives, then end it there."""
        while (chunk := await self.next_body_chunk()) is not None:
            up.body(chunk)
            await up.stream.drain()
        up.end()

    @property
    def waiting_for_100_continue(self) -> bool:
        """The agent sent ``Expect: 100-continue`` and waits for a go-ahead before its body."""
        req = self.request
        return (
            req is not None
            and req.expect_continue
            and not self._body_seen
            and not self.response.started
        )

    @property
    def can_respond(self) -> bool:
        """No response has started on this request yet (a local answer can still be sent)."""
        return not self.response.started

    @property
    def reusable(self) -> bool:
        """The exchange is complete on both sides and the connection may carry another."""
        return self.reader.done and self.response.finished and self.response.keep_alive

    def start_next_cycle(self) -> None:
        self.reader.start_next_cycle()
        self.request = None
        self.response.reset(None)  # a refused next head is answered as a fresh response

    # -- local answers -----------------------------------------------------------------

    async def simple(
        self, status: int, text: str, extra: list[tuple[str, str]] | None = None,
        reason: bytes = b"",
    ) -> None:
        body = text.encode()
        headers = [
            (n.encode(), v.encode())
            for n, v in extra
            or [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ]
        ]
        if self.response.started or any(has_control_bytes(v) for _, v in headers):
            # Response already started (or a header value the proxy built is unusable):
            # raw bytes, then close.
            self.response.keep_alive = False
            self.client.write(
                b"HTTP/1.1 %d Error\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (status, len(body), body)
            )
        else:
            self.response.head(status, headers, reason)
            self.response.data(body)
            self.response.end()
        await self.client.drain()

    async def deny(self, decision: Decision, what: str, fields: dict[str, Any]) -> None:
        text = deny_response.deny_text(decision, what)
        await self.ctx.audit.emit(
            "proxy.deny", rule=decision.origin, reason=text, status=decision.status, **fields
        )
        body = text.encode()
        await self.simple(decision.status, text, deny_response.response_headers(decision, body),
                          deny_response.reason_phrase(decision))

    async def bad_request(self, err: BaseException) -> None:
        await self.ctx.audit.emit(
            "proxy.deny",
            host=self.pinned.host if self.pinned else "-",
            rule="malformed request",
            status=400,
            reason=str(err)[:300],
        )
        await self.simple(400, f"corral: malformed request rejected: {err}\n")

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
