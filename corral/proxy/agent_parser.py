"""The agent's requests, parsed: request heads by llhttp (httptools), bodies framed exactly.

h11 used to parse the agent's side; it costs about 40 us a request here, llhttp about 1 us. The
strictness h11 gave is kept, and checked by a differential test against h11
(tests/proxy/test_agent_parser.py): every request h11 refuses is refused here too, and every
request both accept is framed identically (method, target, headers, body bytes, what follows).

How a message is read:
- The head is cut from the buffer at its first CRLF CRLF, bounded by ``MAX_HEADER_BYTES``
  (complete or not), and refused with obs-fold lines or a bare CR or LF in it. Its request line
  must be exactly ``token SP 1*VCHAR SP HTTP/1.0|1.1 CRLF`` (no leading blank line, no double
  space, no HTTP/0.9). A fresh llhttp parser then parses just the head: header names must be
  tokens, values free of control bytes, Content-Length digits and not repeated, and llhttp
  refuses Content-Length with Transfer-Encoding.
- On top of llhttp: HTTP/1.1 needs exactly one Host (HTTP/1.0 at most one); Transfer-Encoding
  must be one header reading ``chunked``; both Content-Length and Transfer-Encoding are refused;
  Content-Length has at most 20 digits.
- A Content-Length body is counted off the buffer. A chunked body is framed by h11 (fed a fixed
  head, then the bytes), so chunk sizes, extensions, chunk CRLFs and trailers are exactly as
  strict as before; h11 hands back the bytes after the body.
- After a complete request nothing more is parsed until ``start_next_cycle`` (pipelined bytes
  wait in the buffer; ``trailing_data`` is what follows the request, for CONNECT and upgrades).
- Anything refused raises ``BadRequest``; the caller answers 400 and closes the connection.

Stricter than h11 (on purpose, or llhttp's own rules): bare LF line endings, HTTP versions
other than 1.0 and 1.1, methods llhttp does not know (it knows the IANA registry's: WebDAV,
PATCH, PURGE, QUERY, ...), request targets llhttp's URL parser refuses (a host with characters
no host has, a target in none of RFC 9112's four forms), control bytes other than tab (DEL
included) in header values, a repeated Content-Length even with equal values (``5, 5``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import h11
import httptools

from corral.proxy.request_head import MAX_HEADER_BYTES, BadRequest

__all__ = ["NEED_DATA", "Closed", "Data", "End", "Request", "RequestReader"]

_FOLD = re.compile(rb"\r\n[ \t]")
_BARE_SO_FAR = re.compile(rb"\r(?=[^\n])|(?<!\r)\n")  # a CR at the very end may yet be CRLF
# RFC 9112 §3: method is a token, the target visible ASCII, one space each side.
_REQUEST_LINE = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/1\.[01]\r\n")
_CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


class Request(NamedTuple):
    """A request head: names lower-cased, values without surrounding whitespace; plus what
    the response side needs of it (read in the same pass as the checks)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: bytes
    keep_alive: bool  # HTTP/1.1 without "close" in Connection (h11's rule)
    expect_continue: bool  # HTTP/1.1 with "100-continue" in Expect


class Data(NamedTuple):
    data: bytes


class End(NamedTuple):
    pass


class Closed(NamedTuple):
    pass


NEED_DATA = None
_END = End()
_CLOSED = Closed()


def _tokens(value: bytes) -> list[bytes]:
    """A comma-separated header value's items, lower-cased (as h11's ``get_comma_header``)."""
    return [item.strip() for item in value.lower().split(b",")]


class _Head:
    """httptools callbacks for one head (a fresh parser per head: no state carried over)."""

    __slots__ = ("headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.rstrip(b" \t")))


def parse_head(head: bytes) -> Request:
    """One complete head (ending in CRLF CRLF) as a ``Request``; ``BadRequest`` if refused."""
    _check_lines(head)
    cb = _Head()
    parser = httptools.HttpRequestParser(cb)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT or Upgrade: the head is complete; what follows is not HTTP
    except httptools.HttpParserError as err:
        raise BadRequest(f"invalid request: {err}") from None
    version = b"1.1" if head[head.index(b"\r\n") - 1] == 0x31 else b"1.0"
    close, expect = _check_headers(cb.headers, version)
    http11 = version == b"1.1"
    return Request(parser.get_method(), cb.url, cb.headers, version, http11 and not close,
                   http11 and expect)


def _check_lines(head: bytes) -> None:
    """What llhttp is laxer about than h11: size, line folding, bare CR/LF, the request line."""
    if len(head) > MAX_HEADER_BYTES:
        raise BadRequest(f"request head over {MAX_HEADER_BYTES} bytes")
    if b"\r\n " in head or b"\r\n\t" in head:
        raise BadRequest("obsolete line folding in request headers")
    # Every CR and every LF belongs to a CRLF (counting in C beats a regex with a lookbehind).
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        raise BadRequest("bare CR or LF in the request head")
    if _REQUEST_LINE.match(head) is None:
        raise BadRequest("malformed request line")


def _check_headers(headers: list[tuple[bytes, bytes]], version: bytes) -> tuple[bool, bool]:
    """Host and framing headers checked; (Connection: close, Expect: 100-continue)."""
    hosts = te = 0
    close = expect = False
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"connection":
            close = close or b"close" in _tokens(value)
        elif name == b"expect":
            expect = expect or b"100-continue" in _tokens(value)
        elif name == b"transfer-encoding":
            te += 1
            if value.strip(b" \t").lower() != b"chunked":
                raise BadRequest("only Transfer-Encoding: chunked is supported")
        elif name == b"content-length":
            if te:
                raise BadRequest("both Content-Length and Transfer-Encoding")
            if len(value) > 20:  # h11's bound (llhttp checked the digits)
                raise BadRequest("bad Content-Length")
    if te > 1:
        raise BadRequest("more than one Transfer-Encoding header")
    if hosts > 1 or (hosts == 0 and version == b"1.1"):
        raise BadRequest("an HTTP/1.1 request needs exactly one Host header")
    return close, expect


class RequestReader:
    """Requests from the agent's byte stream, one at a time, as events.

    ``receive(data)`` adds bytes (``b""`` at EOF); ``next_event()`` returns a ``Request``, then
    ``Data`` pieces and ``End``; ``NEED_DATA`` (None) when it needs bytes; ``Closed`` when the
    agent closed between requests. After ``End`` it returns ``NEED_DATA`` until
    ``start_next_cycle()``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for the end of the head
        self._eof = False
        self._state = "head"  # head | length | chunked | done
        self._left = 0
        self._chunked: h11.Connection | None = None

    def receive(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the current request (a tunnel's or an upgrade's first bytes)."""
        return bytes(self._buf)

    @property
    def done(self) -> bool:
        """The current request has been read to its end."""
        return self._state == "done"

    def start_next_cycle(self) -> None:
        self._state = "head"
        self._scanned = 0

    def next_event(self) -> Request | Data | End | Closed | None:
        state = self._state
        if state == "head":
            return self._head()
        if state == "length":
            return self._length()
        if state == "chunked":
            return self._chunk()
        return _END  # the request was read to its end; the next waits for start_next_cycle

    def _head(self) -> Request | End | Closed | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            self._scanned = len(buf)
            if len(buf) > MAX_HEADER_BYTES:
                raise BadRequest(f"request head over {MAX_HEADER_BYTES} bytes")
            # Refuse early what can never become a valid head (h11 did too): it would otherwise
            # wait for a CRLF CRLF that an LF-only client never sends.
            if buf[:1] and buf[0] < 0x21:
                raise BadRequest("malformed request line")
            if _FOLD.search(buf):
                raise BadRequest("obsolete line folding in request headers")
            if _BARE_SO_FAR.search(buf):
                raise BadRequest("bare CR or LF in the request head")
            if self._eof:
                if buf:
                    raise BadRequest("connection closed inside a request head")
                return _CLOSED
            return NEED_DATA
        head = bytes(buf[: end + 4])
        del buf[: end + 4]
        request = parse_head(head)
        length = None
        chunked = False
        for name, value in request.headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if chunked:
            self._chunked = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
            self._chunked.receive_data(_CHUNKED_HEAD)
            self._chunked.next_event()
            self._state = "chunked"
        else:  # a body of known length, maybe none: counted off the buffer
            self._left = length or 0
            self._state = "length"
        return request

    def _length(self) -> Data | End | None:
        if self._left == 0:
            self._state = "done"
            return _END
        buf = self._buf
        if not buf:
            if self._eof:
                raise BadRequest("request body ended early")
            return NEED_DATA
        take = min(self._left, len(buf))
        data = bytes(buf[:take])
        del buf[:take]
        self._left -= take
        return Data(data)

    def _chunk(self) -> Data | End | None:
        conn = self._chunked
        assert conn is not None
        if self._buf:
            conn.receive_data(bytes(self._buf))
            self._buf.clear()
        elif self._eof:
            conn.receive_data(b"")
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as err:
            raise BadRequest(f"invalid chunked body: {err}") from None
        if isinstance(event, h11.Data):
            return Data(bytes(event.data))
        if isinstance(event, h11.EndOfMessage):
            self._buf += conn.trailing_data[0]
            self._chunked = None
            self._state = "done"
            return _END
        if event is h11.NEED_DATA:
            if self._eof:
                raise BadRequest("request body ended early")
            return NEED_DATA
        raise BadRequest("request body ended early")
