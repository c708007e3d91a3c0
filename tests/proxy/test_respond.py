"""``corral.proxy.respond``: a response from a real loopback upstream, on both parser paths
(llhttp for an ordinary GET, h11 for HEAD and Expect), reaches the agent audited first,
rebuilt (hop-by-hop gone, no control bytes), interim responses per path, 101s refused unless
asked for, and the upstream connection pooled only after a reusable exchange."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.policy.types import Decision
from corral.proxy.respond import UNASKED_101, allow_kind
from corral.proxy.upstream import UpstreamError

from .unit_harness import allow, run_forward

GET = b"GET /p HTTP/1.1\r\nHost: up.test\r\n\r\n"  # llhttp path
HEAD = b"HEAD /p HTTP/1.1\r\nHost: up.test\r\n\r\n"  # h11 path
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
PATHS = pytest.mark.parametrize("request_", [GET, HEAD], ids=["llhttp", "h11"])


def test_allow_kind() -> None:
    assert allow_kind(allow("inspect")) == "proxy.inspect"
    assert allow_kind(allow("direct")) == "proxy.allow"
    assert allow_kind(Decision("platform", None, "")) == "proxy.allow"  # type: ignore[arg-type]


@PATHS
def test_audited_before_the_agent_sees_a_byte(request_: bytes) -> None:
    got = run_forward(request_, OK)
    assert got.ok and got.response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert got.audit.kinds() == ["proxy.inspect"] and got.audit.agent_had_bytes == [False]
    event = got.audit.events[0][1]
    assert (event["status"], event["bytes_in"], event["rule"]) == (200, 2, "p.yaml:4")


@PATHS
def test_hop_by_hop_response_headers_removed(request_: bytes) -> None:
    got = run_forward(request_, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: t=5\r\n"
                                b"Proxy-Connection: x\r\nX-Kept: 1\r\n\r\nok")
    head = got.response.split(b"\r\n\r\n")[0].lower()
    assert b"x-kept: 1" in head and b"keep-alive:" not in head and b"proxy-connection" not in head


@PATHS
def test_unasked_101_is_a_502(request_: bytes) -> None:
    got = run_forward(request_, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\n\r\n")
    assert isinstance(got.error, UpstreamError) and got.error.status == 502
    if request_ == GET:  # h11 refuses it itself (a switch without a proposal)
        assert str(got.error) in UNASKED_101
    assert got.response == b""
    assert got.audit.events == []  # nothing allowed, nothing relayed


def test_interim_dropped_on_llhttp_relayed_on_h11() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
    fast = run_forward(GET, early + OK)
    assert fast.ok and fast.response.startswith(b"HTTP/1.1 200")
    slow = run_forward(HEAD, early + OK)
    assert slow.ok and slow.response.startswith(b"HTTP/1.1 103")
    assert b"HTTP/1.1 200" in slow.response


def test_transfer_encoding_wins_over_content_length() -> None:
    got = run_forward(GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"2\r\nok\r\n0\r\n\r\n")
    head, _, body = got.response.partition(b"\r\n\r\n")
    assert b"content-length" not in head.lower() and body == b"2\r\nok\r\n0\r\n\r\n"


def test_upstream_closing_without_an_answer_is_a_502() -> None:
    got = run_forward(HEAD, b"", close_after=True)
    assert isinstance(got.error, UpstreamError) and got.error.status == 502


@PATHS
def test_pooled_only_after_a_reusable_exchange(request_: bytes) -> None:
    keep = run_forward(request_, OK if request_ == GET else OK[:-2], requests=3)
    assert keep.ok and keep.up.connections == 1 and keep.pooled == 1  # one connection, reused
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    closing = run_forward(request_, reply + (b"ok" if request_ == GET else b""),
                          close_after=True, requests=2)
    assert closing.ok and closing.up.connections == 2 and closing.pooled == 0


_value = st.binary(min_size=0, max_size=12).filter(lambda v: b"\r" not in v and b"\n" not in v)


@settings(max_examples=60, deadline=None)
@given(_value, st.sampled_from([GET, HEAD]))
def test_no_control_byte_reaches_the_agent(value: bytes, request_: bytes) -> None:
    got = run_forward(request_, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-V: " + value
                                + b"\r\n\r\n" + (b"ok" if request_ == GET else b""))
    stripped = value.strip(b" \t")
    if any((b < 0x20 and b != 0x09) or b == 0x7F for b in stripped):
        assert isinstance(got.error, UpstreamError) and got.error.status == 502
        assert got.response == b""
    else:
        # The value arrives whole; trailing OWS (not part of a field value, RFC 9110 5.5) may
        # or may not be passed on.
        head = got.response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        values = [line[4:].strip(b" \t") for line in head if line.lower().startswith(b"x-v:")]
        assert got.ok and values == [stripped], (values, got.response)


def test_control_bytes_in_an_interim_response_are_a_502() -> None:
    got = run_forward(HEAD, b"HTTP/1.1 103 Early\r\nLink: \x01\r\n\r\n" + OK[:-2])
    assert isinstance(got.error, UpstreamError) and got.error.status == 502
    assert got.response == b""
