"""uvicorn's llhttp protocol, with the writes of one loop step sent as one.

uvicorn writes a response's head, each body piece and a chunked body's terminator as
separate ``transport.write`` calls, each its own syscall and TCP segment (TCP_NODELAY is on).
For the relay (``relay.app``) that is three segments for one small answer: the launcher's
proxy wakes for each and relays each to the agent as its own TLS record. ``HttpProtocol``
hands uvicorn a transport that gathers what is written during one step of the event loop and
writes it once, when the loop next runs its ready callbacks.

Invariants:
- Bytes leave in the order written, and all of them before the loop waits for I/O again: the
  flush is a ``call_soon`` callback, and a loop with ready callbacks polls without waiting.
  Nothing is held for a size or a timer.
- Closing, ``write_eof``, and handing the connection to another protocol (an upgrade) send
  what is gathered first; ``abort`` drops it, as the transport's own buffer is dropped.
- Back-pressure is the real transport's: it pauses and resumes uvicorn's protocol as before,
  and ``get_write_buffer_size`` counts what is gathered too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HttpProtocol"]


class _Gathering:
    """A transport that writes what one loop step wrote as one ``write``; else delegates."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._out: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._out:
            self._loop.call_soon(self._flush)
        # a caller may reuse a mutable buffer once write returns: keep our own bytes
        self._out.append(data if isinstance(data, bytes) else bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._out))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._flush()
        self._transport.set_protocol(protocol)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._out.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``_Gathering`` transport (``uvicorn.run(http=)``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Gathering(transport, self.loop))  # type: ignore[arg-type]
