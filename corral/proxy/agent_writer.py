"""The proxy's responses to the agent, framed as h11's server side framed them.

``agent_parser`` replaced h11 on the agent's side; this is the other half. The bytes written
are the ones h11 wrote for the same events (a differential test checks it): status line
``HTTP/1.1 <code> <reason>``, headers as given (names keep their case), framing chosen from the
request and the response exactly as h11 chooses it.

Invariants:
- No body on a response to HEAD, on 204/304, or on a 2xx to CONNECT. Otherwise
  Transfer-Encoding (only ``chunked`` is accepted) beats Content-Length; a body of unknown
  length is chunked to an HTTP/1.1 agent and close-delimited to an HTTP/1.0 one (Content-Length
  and Transfer-Encoding removed, the connection closed after it).
- A body never exceeds its declared Content-Length and ends only once it is complete; a
  violation raises ``UpstreamError`` (502) and the connection is not reused.
- ``Connection: close`` is added when the agent asked to close, spoke HTTP/1.0, or the body is
  close-delimited; a response carrying ``Connection: close`` ends the connection.
- Headers handed in are already validated (by a parser, or built by the proxy and checked for
  control bytes by the caller): nothing here re-validates them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from corral.proxy.agent_parser import Request
from corral.proxy.upstream import UpstreamError

__all__ = ["ResponseWriter"]

Headers = Sequence[tuple[bytes, bytes]]


def _items(value: bytes) -> list[bytes]:
    """A comma-separated header value's non-empty items, lower-cased (h11's reading)."""
    return [i for i in (item.strip() for item in value.lower().split(b",")) if i]


def _set(headers: Headers, name: bytes, values: list[bytes]) -> list[tuple[bytes, bytes]]:
    out = [(n, v) for n, v in headers if n.lower() != name]
    out += [(name.title(), v) for v in values]
    return out


def _head_bytes(status: int, headers: Headers, reason: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines += [b"%s: %s\r\n" % (n, v) for n, v in headers if n.lower() == b"host"]
    lines += [b"%s: %s\r\n" % (n, v) for n, v in headers if n.lower() != b"host"]
    lines.append(b"\r\n")
    return b"".join(lines)


def _framing_headers(headers: Headers) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Transfer-Encoding, Content-Length and Connection items, in one pass (h11 read these
    three with ``get_comma_header``)."""
    te: list[bytes] = []
    cl: list[bytes] = []
    connection: list[bytes] = []
    for name, value in headers:
        name = name.lower()
        if name == b"transfer-encoding":
            te += _items(value)
        elif name == b"content-length":
            cl += _items(value)
        elif name == b"connection":
            connection += _items(value)
    return te, cl, connection


class ResponseWriter:
    """One response per request cycle (``reset`` starts a cycle), written through ``write``."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self.reset(None)

    def reset(self, request: Request | None) -> None:
        self.method = request.method if request is not None else None
        self.http11 = request is not None and request.http_version == b"1.1"
        self.keep_alive = request is not None and request.keep_alive
        self.started = False  # a final (non-1xx) response head was written
        self.finished = False
        self._mode = "none"  # none | length | chunked | close
        self._left = 0

    def informational(self, status: int, headers: Headers) -> None:
        if self.started:
            raise UpstreamError(502, "interim response after the final one")
        self._write(_head_bytes(status, headers, b""))

    def head(self, status: int, headers: Headers, reason: bytes = b"") -> None:
        if self.started:
            raise UpstreamError(502, "a second response to one request")
        method = self.method
        te, cl, connection = _framing_headers(headers)
        if te and te != [b"chunked"]:
            raise UpstreamError(502, "upstream sent a Transfer-Encoding other than chunked")
        no_body = status in (204, 304) or (method == b"CONNECT" and 200 <= status < 300)
        need_close = False
        if not no_body and (te or not cl):  # a body of unknown length (HEAD judged as GET)
            cl = []
            headers = _set(headers, b"content-length", cl)
            te = [b"chunked"] if self.http11 else []
            headers = _set(headers, b"transfer-encoding", te)
            need_close = not self.http11 and method != b"HEAD"
        if not self.keep_alive or need_close:
            wanted = set(connection)
            wanted.discard(b"keep-alive")
            wanted.add(b"close")
            headers = _set(headers, b"connection", sorted(wanted))
            self.keep_alive = False
        elif b"close" in connection:
            self.keep_alive = False
        self._frame_body(no_body or method == b"HEAD", te, cl)
        self.started = True
        self._write(_head_bytes(status, headers, reason))

    def _frame_body(self, bodiless: bool, te: list[bytes], cl: list[bytes]) -> None:
        """The body's framing follows the headers as sent (h11 decides on the cleaned-up ones)."""
        if bodiless:
            self._mode = "none"
        elif te:
            self._mode = "chunked"
        elif cl:
            try:
                self._left = int(cl[0])
            except ValueError:
                raise UpstreamError(502, "upstream sent an invalid Content-Length") from None
            self._mode = "length"
        else:
            self._mode = "close"
            self.keep_alive = False

    def data(self, data: bytes) -> None:
        if not data:
            return
        mode = self._mode
        if mode == "chunked":
            self._write(b"%x\r\n" % len(data))
            self._write(data)
            self._write(b"\r\n")
            return
        if mode == "length":
            if len(data) > self._left:
                self._left = -1
                raise UpstreamError(502, "upstream sent more body than its Content-Length")
            self._left -= len(data)
        elif mode == "none":
            raise UpstreamError(502, "upstream sent a body on a response that has none")
        self._write(data)

    def end(self) -> None:
        if self._mode == "chunked":
            self._write(b"0\r\n\r\n")
        elif self._mode == "length" and self._left:
            self.keep_alive = False
            raise UpstreamError(502, "upstream body ended before its Content-Length")
        self.finished = True
