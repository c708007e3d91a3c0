"""Byte streams the HTTP layer runs on: a plain TCP stream and a TLS stream over it.

The TLS server side is an ``ssl.SSLObject`` over memory BIOs rather than asyncio's
``start_tls`` because the proxy must peek at a ClientHello (to read its SNI) before deciding to
terminate TLS; bytes already read are handed back through ``pushback`` so nothing is lost.

Invariants:
- ``read`` returns ``b""`` exactly once the peer has finished sending (EOF or TLS close_notify);
  a TLS stream whose peer vanishes without close_notify also reads as EOF, never as data.
- ``write`` only buffers; ``drain()`` sends everything buffered (one syscall, one TLS record
  where possible) and waits for back-pressure. Every write is followed by a drain before the
  writer waits for input, so coalescing never holds bytes back from a waiting peer.
- A ``drain()`` that leaves the transport's buffer empty (nothing new to send, or everything
  sent taken by the kernel at once) on an open transport returns without waiting (there is no
  back-pressure to wait for); otherwise it waits as asyncio's does, so a lost connection still
  raises there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from abc import ABC, abstractmethod

__all__ = ["READ_SIZE", "RawStream", "Stream", "TLSStream"]

READ_SIZE = 256 * 1024
TLS_RECORD = 16 * 1024


class Stream(ABC):
    """The interface both stream kinds implement."""

    @abstractmethod
    async def read(self, n: int = READ_SIZE) -> bytes: ...

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    async def drain(self) -> None: ...

    @abstractmethod
    def write_eof(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def abort(self) -> None:
        """Drop the connection now (no flush, no TLS shutdown): a pending read sees EOF."""
        self.close()


class RawStream(Stream):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pushback: bytes = b""
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.pushback = pushback
        self._out: list[bytes] = []

    async def read(self, n: int = READ_SIZE) -> bytes:
        if self.pushback:
            data, self.pushback = self.pushback[:n], self.pushback[n:]
            return data
        return await self.reader.read(n)

    def write(self, data: bytes) -> None:
        if data:
            self._out.append(data)

    def flush(self) -> None:
        if self._out:
            out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            self.writer.write(out)

    async def drain(self) -> None:
        if self._out:
            self.flush()
        # Everything handed to the transport went out (the usual case: the kernel took it in
        # the write call) and the connection is open: no back-pressure to wait for, so skip
        # asyncio's drain coroutines. Otherwise wait as asyncio does (a lost connection raises).
        transport = self.writer.transport
        if not transport.is_closing() and not transport.get_write_buffer_size():
            return
        await self.writer.drain()

    def write_eof(self) -> None:
        self.flush()
        if self.writer.can_write_eof() and not self.writer.is_closing():
            self.writer.write_eof()

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def abort(self) -> None:
        self._out.clear()
        self.writer.transport.abort()


class TLSStream(Stream):
    """Server-side TLS over a ``RawStream`` (any bytes it already buffered are the handshake)."""

    def __init__(self, raw: RawStream, context: ssl.SSLContext) -> None:
        self.raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._plain: list[bytes] = []
        self._ended = False  # read() has returned b"": later reads take the checked path

    def _flush(self) -> None:
        pending = self._out.read()
        if pending:
            self.raw.write(pending)

    async def _fill(self) -> bool:
        self._flush()
        await self.raw.drain()
        data = await self.raw.read()
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self.ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                if not await self._fill():
                    raise ConnectionResetError("client closed during the TLS handshake") from None
        self._flush()
        await self.raw.drain()

    async def read(self, n: int = READ_SIZE) -> bytes:
        # SSL_read yields at most one record (16 KiB): a larger n only costs a big allocation.
        n = min(n, TLS_RECORD)
        # Nothing buffered on either side of the TLS object: SSL_read could only fail with
        # "want read" (an exception costs more than the check), so fetch first.
        empty = not self._ended and not self._in.pending and not self.ssl.pending()
        if empty and not await self._fill():
            return self._last_read(n)
        while True:
            try:
                return self.ssl.read(n)
            except ssl.SSLWantReadError:
                if not await self._fill():
                    return self._last_read(n)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._ended = True
                return b""

    def _last_read(self, n: int) -> bytes:
        """What is left once the raw stream has ended: buffered plaintext, then b""."""
        try:
            data = self.ssl.read(n)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLWantReadError):
            data = b""
        if not data:
            self._ended = True
        return data

    def write(self, data: bytes) -> None:
        if data:
            self._plain.append(data)

    def _encrypt(self) -> None:
        if self._plain:
            out = self._plain[0] if len(self._plain) == 1 else b"".join(self._plain)
            self._plain.clear()
            self.ssl.write(out)
            self._flush()

    async def drain(self) -> None:
        self._encrypt()
        await self.raw.drain()

    def write_eof(self) -> None:
        self._encrypt()
        with contextlib.suppress(ssl.SSLError):
            self.ssl.unwrap()
        self._flush()
        self.raw.flush()

    def close(self) -> None:
        with contextlib.suppress(ssl.SSLError):
            self._encrypt()
        self.raw.close()

    def abort(self) -> None:
        self._plain.clear()
        self.raw.abort()
