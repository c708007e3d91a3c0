"""Plain HTTP through the explicit proxy: decisions, 403s, injection rules, streaming, 400s."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import h11
import httpx
import pytest

from corral.proxy.agent_parser import End, Request, RequestReader
from corral.proxy.headers import forward_headers
from corral.proxy.request_head import (
    BadRequest,
    HostMismatch,
    Pinned,
    request_target,
)

from .conftest import RunningProxy, curl

POLICY = """
name: plain
egress:
  - host: api.corral.test
    ports: [80]
    action: inspect
    methods: [GET, POST, TRACE, PUT]
    credential: tok
    allow_private: true
  - host: other.corral.test
    ports: [80]
    action: inspect
    credential: open
    allow_private: true
  - host: api.corral.test
    ports: [80]
    action: deny
    reason: deletes are out of scope
credentials:
  tok: {secret: tok, header: Authorization, format: "Bearer {secret}", env: TOK}
  open: {secret: open, header: X-Api-Key, format: "{secret}", plaintext: true}
"""


def _echo(text: str) -> dict[str, object]:
    return json.loads(text)  # type: ignore[no-any-return]


def _header(echo: dict[str, object], name: str) -> list[str]:
    # headers_hex: what the upstream received (the proxy scrubs the secret from what it echoes)
    received = echo["headers_hex"]
    return [bytes.fromhex(v).decode("latin-1") for k, v in received  # type: ignore[attr-defined]
            if k.lower() == name.lower()]


@pytest.fixture
def proxy(make_proxy) -> RunningProxy:  # type: ignore[no-untyped-def]
    return make_proxy(POLICY, {"tok": "SECRET-TOK", "open": "SECRET-OPEN"})


def test_allowed_plain_request_no_injection_without_plaintext(proxy: RunningProxy) -> None:
    done = curl(proxy, "http://api.corral.test/echo?x=1", "-H", "Authorization: Bearer fake")
    echo = _echo(done.stdout)
    assert echo["path"] == "/echo?x=1"
    assert _header(echo, "Authorization") == ["Bearer fake"]  # not injected over plain HTTP
    assert proxy.sink.of("proxy.inspect", host="api.corral.test", path="/echo", status=200)
    assert not proxy.sink.of("credential.inject")


def test_plaintext_binding_injects_and_replaces(proxy: RunningProxy) -> None:
    done = curl(proxy, "http://other.corral.test/echo", "-H", "x-api-key: agent-value")
    assert _header(_echo(done.stdout), "X-Api-Key") == ["SECRET-OPEN"]
    assert proxy.sink.of("credential.inject", binding="open", host="other.corral.test")


def test_trace_never_injected(proxy: RunningProxy) -> None:
    done = curl(proxy, "-X", "TRACE", "http://other.corral.test/echo")
    assert _header(_echo(done.stdout), "X-Api-Key") == []
    assert not proxy.sink.of("credential.inject")


def test_deny_names_rule_and_is_audited_first(proxy: RunningProxy) -> None:
    done = curl(proxy, "-i", "-X", "DELETE", "http://api.corral.test/echo")
    assert done.stdout.startswith("HTTP/1.1 403")
    assert "X-Corral-Decision: deny; rule=" in done.stdout
    assert "policy0.yaml:15" in done.stdout and "deletes are out of scope" in done.stdout
    (event,) = proxy.sink.of("proxy.deny", method="DELETE")
    assert event["rule"].endswith("policy0.yaml:15")
    default = curl(proxy, "-i", "http://nowhere.corral.test/")
    assert "403" in default.stdout.splitlines()[0] and "default deny" in default.stdout


def test_python_clients(proxy: RunningProxy) -> None:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy.url})
    )
    with opener.open("http://api.corral.test/echo", timeout=10) as resp:
        assert _echo(resp.read().decode())["method"] == "GET"
    with httpx.Client(proxy=proxy.url, timeout=10) as client:
        first = client.post("http://api.corral.test/echo", content=b"x" * 100_000)
        second = client.get("http://api.corral.test/echo")  # same connection: keep-alive
        assert _echo(first.text)["body_len"] == 100_000 and second.status_code == 200
    assert len(proxy.sink.of("proxy.inspect", host="api.corral.test")) == 3


def test_pipelined_requests_are_answered_in_order(proxy: RunningProxy) -> None:
    # Three requests in one write: a chunked POST, a Content-Length POST, a GET that closes.
    host = b"Host: api.corral.test\r\n"
    burst = (
        b"POST http://api.corral.test/echo?n=1 HTTP/1.1\r\n" + host
        + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        + b"POST http://api.corral.test/echo?n=2 HTTP/1.1\r\n" + host
        + b"Content-Length: 5\r\n\r\nhello"
        + b"GET http://api.corral.test/echo?n=3 HTTP/1.1\r\n" + host
        + b"Connection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(burst)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    bodies: list[dict[str, object]] = []
    for _ in range(3):
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        body = b""
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Response):
                assert event.status_code == 200
            elif isinstance(event, h11.Data):
                body += event.data
        bodies.append(_echo(body.decode()))
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
    assert [(b["path"], b["body_len"]) for b in bodies] == [
        ("/echo?n=1", 3), ("/echo?n=2", 5), ("/echo?n=3", 0)
    ]


def test_expect_100_continue_is_answered_before_the_body(proxy: RunningProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"POST http://api.corral.test/echo HTTP/1.1\r\nHost: api.corral.test\r\n"
                     b"Expect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 \r\n\r\n"  # before the agent sent its body
        sock.sendall(b"hello")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
    assert _echo(body.decode())["body_len"] == 5


def test_sse_streams_chunk_by_chunk(proxy: RunningProxy) -> None:
    arrivals = []
    with httpx.Client(proxy=proxy.url, timeout=10) as client, client.stream(
        "GET", "http://api.corral.test/sse"
    ) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 3
    assert arrivals[2] - arrivals[0] > 0.6  # events arrived as sent, not buffered to the end


def test_upstream_failure_is_502(make_proxy) -> None:  # type: ignore[no-untyped-def]
    # Port 81 in the outside namespace is closed: connection refused -> 502 with the reason.
    proxy = make_proxy(
        "name: dead\negress:\n  - {host: api.corral.test, ports: [81], action: direct,"
        " allow_private: true}\n"
    )
    done = curl(proxy, "-i", "http://api.corral.test:81/")
    assert done.stdout.split()[1] == "502", done.stdout
    assert "cannot connect to api.corral.test:81" in done.stdout


SMUGGLING = {
    "cl-cl": b"POST http://api.corral.test/echo HTTP/1.1\r\nHost: api.corral.test\r\n"
    b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-te": b"POST http://api.corral.test/echo HTTP/1.1\r\nHost: api.corral.test\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET http://api.corral.test/echo HTTP/1.1\r\nHost: api.corral.test\r\n"
    b"X-A: a\r\n b\r\n\r\n",
    "bad-chunk": b"POST http://api.corral.test/echo HTTP/1.1\r\nHost: api.corral.test\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "te-not-chunked": b"POST http://api.corral.test/echo HTTP/1.1\r\nHost: api.corral.test\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "huge-header": b"GET http://api.corral.test/echo HTTP/1.1\r\nHost: api.corral.test\r\n"
    b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    "space-before-colon": b"GET http://api.corral.test/echo HTTP/1.1\r\n"
    b"Host : api.corral.test\r\n\r\n",
    "dot-segments": b"GET http://api.corral.test/a/../echo HTTP/1.1\r\n"
    b"Host: api.corral.test\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_smuggling_shapes_get_400_and_close(proxy: RunningProxy, case: str) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(SMUGGLING[case])
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert data.count(b"HTTP/1.1") == 1  # closed after the 400, nothing forwarded
    assert not proxy.sink.of("proxy.inspect")


def test_secret_with_line_break_is_never_sent(make_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = make_proxy(POLICY, {"tok": "x", "open": "v\r\nX-Smuggled: 1"})
    done = curl(proxy, "-i", "http://other.corral.test/echo")
    assert "HTTP/1.1 403" in done.stdout and "line break" in done.stdout
    assert "X-Smuggled" not in done.stdout and "x-smuggled" not in done.stdout
    assert not proxy.sink.of("proxy.inspect")


def _req(target: bytes, host: bytes, method: bytes = b"GET") -> h11.Request:
    return h11.Request(method=method, target=target, headers=[(b"host", host)])


def test_request_target_explicit_and_pinned() -> None:
    target = request_target(_req(b"http://API.corral.test./a?b=1", b"api.corral.test"), None, set())
    assert target == ("api.corral.test", 80, False, "/a?b=1") and target.path == "/a"
    pinned, known = Pinned("api.corral.test", 8443, tls=True), set[bytes]()
    target = request_target(_req(b"/x", b"api.corral.test:8443"), pinned, known)
    assert target.authority == "api.corral.test:8443" and known == {b"api.corral.test:8443"}
    with pytest.raises(HostMismatch):  # absolute-form authority counts as the Host
        request_target(_req(b"http://evil.test/x", b"api.corral.test:8443"), pinned, set())
    with pytest.raises(HostMismatch):
        request_target(_req(b"/x", b"api.corral.test:9999"), pinned, set())
    with pytest.raises(BadRequest):  # encoded dot-segments too
        request_target(_req(b"/a/%2e%2e/x", b"api.corral.test:8443"), pinned, set())
    with pytest.raises(BadRequest):  # the explicit proxy needs absolute form
        request_target(_req(b"/x", b"api.corral.test"), None, set())


def test_reader_checks_heads_split_across_reads() -> None:
    reader = RequestReader()
    reader.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # a complete head, then the next
    assert isinstance(reader.next_event(), Request)
    assert isinstance(reader.next_event(), End)
    reader.start_next_cycle()
    reader.receive(b"GET / HTTP/1.1\r\nX-A: a\r")
    assert reader.next_event() is None
    reader.receive(b"\n b\r\n\r\n")
    with pytest.raises(BadRequest, match="folding"):
        reader.next_event()
    big = RequestReader()
    big.receive(b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000)
    with pytest.raises(BadRequest, match="bytes"):
        big.next_event()


def test_forward_headers_drops_hop_by_hop_but_never_framing() -> None:
    headers = [
        (b"connection", b"X-Secret, content-length, upgrade"),
        (b"x-secret", b"1"),
        (b"content-length", b"3"),
        (b"upgrade", b"websocket"),
        (b"proxy-authorization", b"Basic x"),
        (b"accept", b"*/*"),
    ]
    assert forward_headers(headers, False) == [(b"content-length", b"3"), (b"accept", b"*/*")]
    kept = forward_headers(headers, True)
    assert (b"upgrade", b"websocket") in kept and (b"x-secret", b"1") not in kept
