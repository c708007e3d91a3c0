"""One HTTP/1.1 connection of ``corral.client``: a socket (TLS for https), responses read by llhttp.

``corral run --project`` loads this on its launch path: ``http.client`` would bring the
``email`` package with it (7-13 ms of imports per launch), h11 brings ``dataclasses`` (~8 ms);
httptools (llhttp, already what the proxy reads upstream responses with) imports in ~1 ms.

Invariants:
- Nothing is sent that could split a request: a header name or value, or the request target,
  holding CR, LF, NUL (or, in the target, a space or other control byte) is refused
  (``ValueError``) before any byte is written.
- A response is whole only when llhttp says so (Content-Length or chunked framing), or, for a
  response that has neither, when the server closes the connection; a connection that ends
  earlier is ``Incomplete``, one that ends before any byte of the response is ``Closed`` (a
  keep-alive connection the server had already dropped: the caller may send again).
- At most ``limit`` bytes of body are kept: a longer answer is returned cut to ``limit + 1``
  bytes and the connection closed, so the caller can refuse it without holding it.
- A connection is reused only after a complete response llhttp says may keep alive, with no
  bytes left over.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, NamedTuple

import httptools

if TYPE_CHECKING:
    import ssl

__all__ = ["Closed", "Connection", "Incomplete", "Response"]

READ_SIZE = 64 * 1024
_BAD_HEADER = frozenset(b"\r\n\0")
_BAD_TARGET = frozenset(range(33)) | {127}


class Closed(ConnectionError):
    """The connection ended before any byte of the response."""


class Incomplete(ConnectionError):
    """The connection ended, or llhttp refused the bytes, in the middle of a response."""


class Response(NamedTuple):
    status: int
    reason: str
    body: bytes


class _Reader:
    """llhttp's callbacks for one response."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self.reason = b""
        self.parts: list[bytes] = []
        self.framed = False  # Content-Length or chunked: the end is in the bytes, not at EOF
        self.head = self.done = self.extra = self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        if self.done:  # a second response after the one asked for: stop parsing there
            self.extra = True
            raise ValueError("bytes after the response")

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and
                                         b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.head = True

    def on_body(self, body: bytes) -> None:
        if self.size <= self.limit:
            self.parts.append(body[: self.limit + 1 - self.size])
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.done = True
        # asked here: llhttp resets the message's flags once it has returned
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()


def _check(data: bytes, bad: frozenset[int], what: str) -> None:
    if not bad.isdisjoint(data):
        raise ValueError(f"{what}: control characters are refused")


class Connection:
    """One persistent connection; not thread-safe."""

    def __init__(self, host: str, port: int, *, timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.timeout, self.tls = host, port, timeout, tls
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        # An ASCII host goes to getaddrinfo as bytes: as str it is encoded with the idna
        # codec, which imports encodings.idna, stringprep and unicodedata (~1.5 ms).
        name: str | bytes = self.host.encode() if self.host.isascii() else self.host
        # (typeshed says str; create_connection hands the host to getaddrinfo, which takes bytes)
        sock = socket.create_connection((name, self.port),  # type: ignore[arg-type]
                                        timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(self, method: str, target: str, headers: dict[str, str],
                 body: bytes | None, *, limit: int) -> Response:
        """Send one request and read its response (``OSError`` when the connection fails)."""
        head = [f"{method} {target} HTTP/1.1"]
        _check(target.encode(), _BAD_TARGET, "request target")
        for name, value in headers.items():
            _check(f"{name}{value}".encode(), _BAD_HEADER, f"header {name}")
            head.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
        if self.sock is None:
            self.sock = self._connect()
        sock = self.sock
        try:
            sock.sendall(data)
            return self._read(sock, limit)
        except BaseException:
            self.close()
            raise

    def _read(self, sock: socket.socket, limit: int) -> Response:
        reader = _Reader(limit)
        parser = reader.parser = httptools.HttpResponseParser(reader)
        received = 0
        while not reader.done and reader.size <= limit:
            chunk = sock.recv(READ_SIZE)
            if not chunk:
                if received == 0:
                    raise Closed("the server closed the connection")
                if reader.head and not reader.framed:
                    reader.done = True  # a body delimited by the end of the connection
                    self.close()
                    break
                raise Incomplete("the server closed the connection mid-response")
            received += len(chunk)
            try:
                parser.feed_data(chunk)
            except httptools.HttpParserUpgrade:
                raise Incomplete("the server answered with a protocol upgrade") from None
            except httptools.HttpParserError as err:
                if not reader.done:
                    raise Incomplete(f"malformed response ({err})") from None
                self.close()  # bytes after a complete response: never reuse the connection
        if not reader.done or reader.extra or not reader.keep_alive:
            self.close()
        return Response(parser.get_status_code(), reader.reason.decode("latin-1"),
                        b"".join(reader.parts))
