"""The upstream side of the exchanges llhttp cannot carry: HEAD, Upgrade, Expect, AWS re-signing.

The h11 client counterpart of ``upstream_http.FastUpstream`` (same ``stream``, ``idle``,
``body``, ``end`` and ``next_event(timeout, before_read)`` surface), for the requests that
``upstream_http`` leaves out.

Invariants:
- Requests and bodies are framed by h11 from events, never copied raw from the agent.
- Before waiting for upstream bytes, whatever was relayed to the agent so far is drained, so a
  streamed response never sits in the proxy while it waits.
- An upstream that sends nothing for ``timeout`` seconds is a 504 (``UpstreamError``).
- A connection is idle (reusable) only when h11 says both sides are back at IDLE.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11

from corral.proxy.request_head import MAX_HEADER_BYTES
from corral.proxy.streams import READ_SIZE, Stream
from corral.proxy.upstream import UpstreamError

__all__ = ["H11Upstream"]


class H11Upstream:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)

    @property
    def idle(self) -> bool:
        return self.conn.our_state is h11.IDLE

    async def next_event(self, timeout: float, before_read: Stream | None = None) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if before_read is not None:
                await before_read.drain()  # what we relayed so far goes out before we wait
            try:
                async with asyncio.timeout(timeout):
                    data = await self.stream.read(READ_SIZE)
            except TimeoutError:
                raise UpstreamError(504, "upstream did not answer in time") from None
            self.conn.receive_data(data)

    def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.stream.write(data)

    def body(self, data: bytes) -> None:
        self.send(h11.Data(data=data))

    def end(self) -> None:
        self.send(h11.EndOfMessage(headers=[]))

    def recycle(self) -> bool:
        """Ready the connection for the next request; False if it cannot be reused."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False
