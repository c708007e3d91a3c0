"""The upstream side of an ordinary request: serialise it, parse the response with llhttp.

The agent's side is parsed strictly (``agent_parser``: h11's strictness against smuggling);
towards the upstream the proxy only writes requests it has already validated and reads
responses, so a C parser (httptools, i.e. llhttp) carries that half of the hot path.

Only "plain" exchanges come here: no HEAD (llhttp cannot be told a body is absent), no
CONNECT, no Upgrade, no Expect, no re-signed AWS request; ``forward`` sends those to the h11
client (``upstream_h11``).

Invariants:
- The request line and headers written are exactly those the agent parser accepted (minus
  hop-by-hop), plus the Host the proxy built and an injected header already checked for
  control bytes; the body is re-framed here (Content-Length bodies are copied as the parser
  delivered them, chunked bodies are re-chunked), never copied raw from the agent.
- A response is handed on as events ("head", "data", "end"); the agent side checks the values
  for control bytes and re-frames it (``agent_writer``). Anything llhttp rejects is an
  upstream error (502).
- A connection is reused only after a complete response that llhttp says may keep alive and
  with no bytes left over.
- A read that waits ``timeout`` seconds for the upstream is a 504 and the connection is dropped;
  one timer per connection, re-armed per period rather than per read (as the agent's watchdog).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import httptools

from corral.proxy.streams import READ_SIZE, Stream
from corral.proxy.upstream import UpstreamError

__all__ = ["FastUpstream", "serialise_head"]


def serialise_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    lines += [b"%s: %s\r\n" % (name, value) for name, value in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


class FastUpstream:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.parser = httptools.HttpResponseParser(self)
        self.events: deque[tuple[Any, ...]] = deque()
        self.idle = True
        self.chunked = False
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._ended = False
        self._head_seen = False
        self._keep_alive = False
        self._timeout = 0.0
        self._waiting_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False

    # -- httptools callbacks -----------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200:
            self._head_seen = True
        self.events.append(("head", status, self._headers, self._reason))
        self._headers, self._reason = [], b""

    def on_body(self, body: bytes) -> None:
        self.events.append(("data", body))

    def on_message_complete(self) -> None:
        if self._head_seen:
            self._ended = True
            # llhttp resets after the message: ask now, not later.
            self._keep_alive = self.parser.should_keep_alive()
            self.events.append(("end",))

    # -- request side ------------------------------------------------------------------

    def start(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.idle = False
        self._ended = self._head_seen = self._keep_alive = False
        self.chunked = any(
            n == b"transfer-encoding" and v.strip().lower() == b"chunked" for n, v in headers
        )
        self.stream.write(serialise_head(method, target, headers))

    def body(self, data: bytes) -> None:
        if not data:
            return
        if self.chunked:
            self.stream.write(b"%x\r\n" % len(data))
            self.stream.write(data)
            self.stream.write(b"\r\n")
        else:
            self.stream.write(data)

    def end(self) -> None:
        if self.chunked:
            self.stream.write(b"0\r\n\r\n")

    # -- response side -----------------------------------------------------------------

    async def next_event(
        self, timeout: float, before_read: Stream | None = None
    ) -> tuple[Any, ...]:
        while not self.events:
            if before_read is not None:
                await before_read.drain()
            data = await self._read(timeout)
            if not data:
                if self._head_seen and not self._ended and not self.parser.should_keep_alive():
                    # A close-delimited body ends with the connection.
                    self._ended = True
                    self.events.append(("end",))
                    break
                raise UpstreamError(502, "upstream closed the connection mid-response")
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                # llhttp stops at a 101; this path never asks to upgrade (respond.py).
                raise UpstreamError(
                    502, "upstream switched protocols though the agent did not ask to"
                ) from None
            except httptools.HttpParserError as err:
                if not self._ended:
                    raise UpstreamError(502, f"upstream sent an invalid response: {err}") from None
                self._keep_alive = False  # junk after a complete response: never reuse
            if self._ended and self.events and self.events[-1] != ("end",):
                self._keep_alive = False  # bytes after the response: never reuse
        return self.events.popleft()

    async def _read(self, timeout: float) -> bytes:
        """One read from the upstream; 504 if it waits ``timeout`` seconds."""
        self._timeout = timeout
        self._waiting_since = time.monotonic()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._watchdog)
        try:
            data = await self.stream.read(READ_SIZE)
        except Exception:
            if self._timed_out:
                raise UpstreamError(504, "upstream did not answer in time") from None
            raise
        finally:
            self._waiting_since = None
        if self._timed_out:
            raise UpstreamError(504, "upstream did not answer in time")
        return data

    def _watchdog(self) -> None:
        """Drop the connection if the current read has waited too long, else re-arm (or stop
        while no read waits: the next read arms a new timer)."""
        self._timer = None
        since = self._waiting_since
        if since is None:
            return
        left = self._timeout - (time.monotonic() - since)
        if left > 0:
            self._timer = asyncio.get_running_loop().call_later(left, self._watchdog)
            return
        self._timed_out = True
        self.stream.abort()  # the pending read ends (EOF) and raises the 504 above

    def reusable(self) -> bool:
        ok = self._ended and not self.events and self._keep_alive
        if ok:
            self.idle = True
        return ok
