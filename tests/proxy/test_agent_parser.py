"""The agent's side without h11, checked against h11: the parser refuses everything h11 (plus
the proxy's old obs-fold, size and framing checks) refused and frames what both accept
identically; the response writer writes the bytes h11 wrote."""

from __future__ import annotations

import re
from typing import Any

import h11
import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.proxy.agent_parser import Data, End, Request, RequestReader
from corral.proxy.agent_writer import ResponseWriter
from corral.proxy.request_head import MAX_HEADER_BYTES, BadRequest, check_framing
from corral.proxy.upstream import UpstreamError

H = b"Host: api.corral.test\r\n"
CORPUS = [
    b"GET / HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /a/b?c=d HTTP/1.1\r\n" + H + b"User-Agent: x\r\nAccept: */*\r\n\r\n",
    b"GET http://api.corral.test/x HTTP/1.1\r\n" + H + b"\r\n",
    b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n",
    b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"PUT /p HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.0\r\n\r\n",
    b"CONNECT api.corral.test:443 HTTP/1.1\r\nHost: api.corral.test:443\r\n\r\n\x16\x03\x01",
    b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw",
    b"HEAD / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    b"POST /e HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n" + H + b"\r\n",
    b"POST /1 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
    b"GET /2 HTTP/1.1\r\n" + H + b"\r\n",
]
# Lines smuggling attempts are made of, inserted at line starts.
LINES = [
    b"Content-Length: 5\r\n", b"Content-Length: 6\r\n", b"Content-Length: 5, 5\r\n",
    b"Content-Length: +5\r\n", b"Content-Length: 00000000000000000000005\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: chunked, gzip\r\n", b"Transfer-Encoding: CHUNKED \r\n",
    b"Host: evil.test\r\n", b"Host:\r\n", b" folded\r\n", b"\tfolded\r\n", b"X-A : b\r\n",
    b"X-A: b\x00c\r\n", b"X-A: b\x7fc\r\n", b"X-A: b\rc\r\n", b"X-A: b\nc\r\n", b"\r\n",
    b"\n", b"X\x80A: b\r\n", b": b\r\n", b"Connection: close\r\n", b"Expect: 100-continue\r\n",
    b"0\r\n\r\n", b"000000000000000000005\r\nhello\r\n", b"zz\r\n", b"5 \r\n", b"5\nhello\n",
    b"GET / HTTP/1.1\r\n", b"GET  / HTTP/1.1\r\n", b"GET /\r\n", b"get / HTTP/1.1\r\n",
    b"GET / HTTP/1.2\r\n", b"GET / HTTP/2.0\r\n", b"GET / http/1.1\r\n",
]
BYTES = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b";", b"\x00", b"\x7f", b"\xff",
         b"0", b"9", b"a", b"Z", b"/", b"?", b"%", b"\"", b"=", b"-", b"\x0b", b"#", b"@"]

_OLD_FOLD = re.compile(rb"\r?\n[ \t]")


def _h11_reference(pieces: list[bytes]) -> tuple[Any, ...]:
    """What the proxy did before: HeadGuard (size, obs-fold), h11, then check_framing."""
    data = b"".join(pieces)
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    if len(head) > MAX_HEADER_BYTES or _OLD_FOLD.search(head):
        return ("reject",)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    request = None
    body = b""
    try:
        for piece in pieces:
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    break
                if isinstance(event, h11.Request):
                    request = (event.method, event.target, list(event.headers))
                    check_framing(event)
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return ("ok", *request, body, bytes(conn.trailing_data[0]))  # type: ignore[misc]
    except (h11.RemoteProtocolError, BadRequest):
        return ("reject",)
    return ("incomplete",)


def _reader(pieces: list[bytes]) -> tuple[Any, ...]:
    reader = RequestReader()
    request = None
    body = b""
    try:
        for piece in pieces:
            reader.receive(piece)
            while (event := reader.next_event()) is not None:
                if isinstance(event, Request):
                    request = (event.method, event.target, event.headers)
                    check_framing(event)
                elif isinstance(event, Data):
                    body += event.data
                elif isinstance(event, End):
                    return ("ok", *request, body, reader.trailing_data)  # type: ignore[misc]
                else:
                    return ("closed",)
    except BadRequest:
        return ("reject",)
    return ("incomplete",)


_KNOWN_METHODS = {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS",
                  b"TRACE", b"PATCH"}
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:", re.IGNORECASE)


def _documented_stricter(pieces: list[bytes]) -> bool:
    """Whether a request h11 accepts falls in the set agent_parser documents refusing:
    bare LF line endings, HTTP versions other than 1.0 and 1.1, methods llhttp does not know,
    a target llhttp's URL parser refuses, control bytes other than tab in header
    values, a repeated Content-Length."""
    data = b"".join(pieces)
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    line, _, fields = head.partition(b"\r\n")
    if re.search(rb"(?<!\r)\n|\r(?!\n)", head):
        return True
    parts = line.split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        return True
    if parts[0] not in _KNOWN_METHODS:
        return True  # llhttp's registry differs from h11's "any token"
    # llhttp's URL parser reads a CONNECT target as an authority, any other as a URL.
    target = b"http://" + parts[1] if parts[0] == b"CONNECT" else parts[1]
    try:
        httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return True  # llhttp's URL parser refuses the target
    for field in fields.split(b"\r\n"):
        if any((b < 0x20 and b != 0x09) or b == 0x7F for b in field):
            return True
    lengths = [f for f in fields.split(b"\r\n") if _CONTENT_LENGTH.match(b"\r\n" + f)]
    return len(lengths) > 1 or any(b"," in f for f in lengths)  # "5, 5" repeats it too


def _check(pieces: list[bytes]) -> None:
    """Both directions: what h11 refuses is refused; what h11 accepts is framed identically,
    or refused only for a reason in the documented stricter set (so a parser that refuses
    everything fails here)."""
    old, new = _h11_reference(pieces), _reader(pieces)
    if old[0] == "reject":
        assert new[0] == "reject", (pieces, old, new)
    elif old[0] == "ok":
        if new[0] == "reject":
            assert _documented_stricter(pieces), ("refused but h11 accepts", pieces, old)
        else:
            assert old == new, (pieces, old, new)  # framed identically
    elif new[0] == "reject":
        assert _documented_stricter(pieces), ("refused but h11 waits for more", pieces, old)
    else:
        assert new[0] == "incomplete", (pieces, old, new)


@st.composite
def mutated(draw: st.DrawFn) -> list[bytes]:
    data = draw(st.sampled_from(CORPUS))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["line", "byte", "delete", "replace"]))
        starts = [0] + [m.end() for m in re.finditer(rb"\n", data)]
        if kind == "line":
            at = draw(st.sampled_from(starts))
            data = data[:at] + draw(st.sampled_from(LINES)) + data[at:]
        elif kind == "byte":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.sampled_from(BYTES)) + data[at:]
        elif kind == "delete" and data:
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + data[at + draw(st.integers(1, 4)):]
        elif data:
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + draw(st.sampled_from(BYTES)) + data[at + 1:]
    split = draw(st.integers(0, len(data)))
    return [p for p in (data[:split], data[split:]) if p]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_parser_refuses_what_h11_refuses_and_frames_the_rest_alike(pieces: list[bytes]) -> None:
    _check(pieces)


REFUSED = [
    # Shapes h11 (with the old checks) refuses; each must be refused here too.
    b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"000000000000000000005\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET  / HTTP/1.1\r\n" + H + b"\r\n",
    b"\r\nGET / HTTP/1.1\r\n" + H + b"\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + H + H + b"\r\n",
    b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n",
    b"GET /a\xffb HTTP/1.1\r\n" + H + b"\r\n",
    b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 000000000000000000005\r\n\r\nhello",
    b"GET / HTTP/1.1\r\n" + H + b"X: a\n\r\n",
]


@pytest.mark.parametrize("data", [*CORPUS, *REFUSED])
def test_known_shapes(data: bytes) -> None:
    _check([data])
    if _h11_reference([data])[0] == "reject":
        assert _reader([data])[0] == "reject"


def test_pipelined_requests_wait_for_the_next_cycle() -> None:
    reader = RequestReader()
    reader.receive(CORPUS[-1])
    assert isinstance(reader.next_event(), Request)
    assert reader.next_event() == Data(b"a")
    assert isinstance(reader.next_event(), End)
    assert isinstance(reader.next_event(), End)  # nothing more until the next cycle
    assert reader.trailing_data.startswith(b"GET /2 ")
    reader.start_next_cycle()
    event = reader.next_event()
    assert isinstance(event, Request) and event.target == b"/2"


# -- the response side ------------------------------------------------------------------


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[bytes, bytes]], list[bytes]]:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"CONNECT"]))
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    target = b"a:443" if method == b"CONNECT" else b"/"
    request = b"%s %s HTTP/%s\r\nHost: a\r\n" % (method, target, version)
    if draw(st.booleans()):
        request += b"Connection: close\r\n"
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
    body = draw(st.lists(st.binary(min_size=0, max_size=5), max_size=3))
    headers: list[tuple[bytes, bytes]] = [(b"server", b"x")]
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    empty = status in (204, 304) or method == b"HEAD" or (method == b"CONNECT" and status < 300)
    if framing == "length":
        headers.append((b"content-length", b"%d" % sum(map(len, body))))
    elif framing == "chunked":
        headers.append((b"transfer-encoding", b"chunked"))
    if draw(st.booleans()):
        headers.append((b"connection", draw(st.sampled_from([b"keep-alive", b"close"]))))
    if empty:
        body = []
    return request + b"\r\n", status, headers, body


@settings(max_examples=300, deadline=None)
@given(exchanges())
def test_writer_writes_what_h11_wrote(exchange: tuple[Any, ...]) -> None:
    request, status, headers, body = exchange
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    conn.next_event()
    expected = conn.send(h11.Response(status_code=status, headers=headers, reason=b"R")) or b""
    tunnel = request.startswith(b"CONNECT") and status < 300  # bytes follow, not a message end
    if not tunnel:
        for piece in body:
            expected += conn.send(h11.Data(data=piece)) or b""
        expected += conn.send(h11.EndOfMessage()) or b""
    h11_reuses = conn.our_state is h11.DONE

    out: list[bytes] = []
    reader = RequestReader()
    reader.receive(request)
    req = reader.next_event()
    assert isinstance(req, Request)
    writer = ResponseWriter(out.append)
    writer.reset(req)
    writer.head(status, headers, b"R")
    assert b"".join(out) == expected[: len(b"".join(out))]
    if tunnel:
        return
    for piece in body:
        writer.data(piece)
    writer.end()
    assert b"".join(out) == expected
    assert writer.keep_alive == h11_reuses


def test_writer_refuses_a_body_over_or_under_its_length() -> None:
    reader = RequestReader()
    reader.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    req = reader.next_event()
    assert isinstance(req, Request)
    writer = ResponseWriter([].append)
    writer.reset(req)
    writer.head(200, [(b"content-length", b"3")])
    with pytest.raises(UpstreamError):
        writer.data(b"four")
    writer.reset(req)
    writer.head(200, [(b"content-length", b"3")])
    writer.data(b"ab")
    with pytest.raises(UpstreamError):
        writer.end()
    assert not writer.keep_alive
