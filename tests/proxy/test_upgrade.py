"""Protocol upgrades through the proxy: only a checked WebSocket handshake becomes a tunnel.

The upstream (``upgrade_servers.Smuggler``) switches protocols for whatever it is asked and
then keeps serving HTTP/1.1 on the raw socket: the h2c-smuggling class. Every test checks what
reached it, not only what the agent saw.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from .conftest import Outside, RunningProxy
from .upgrade_servers import Smuggler, echo_server, smuggler

HOST = "ws.corral.test"
POLICY = """
name: upgrade
egress:
  - host: ws.corral.test
    ports: [PORTS]
    action: inspect
    methods: [GET, POST]
    paths: ["/app/**"]
    tls_ca: OUTSIDE_CA
    allow_private: true
  - host: ws.corral.test
    ports: [PORTS]
    action: deny
    paths: ["/admin/**"]
    reason: admin is off limits
"""
H2C = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
)
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
WEBSOCKET = (
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\n"
)
SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: ws.corral.test\r\n\r\n"


@dataclass
class Env:
    proxy: RunningProxy
    plain: Smuggler
    tls: Smuggler
    ws_plain: int
    ws_tls: int

    def open(self, tls: bool, path: str) -> tuple[socket.socket, bytes]:
        """A connection to the proxy and the request target to use on it: absolute-form for
        plain HTTP, origin-form inside an inspected CONNECT tunnel."""
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10)
        if not tls:
            return sock, b"http://%s:%d%s" % (HOST.encode(), self.plain.port, path.encode())
        sock.sendall(b"CONNECT %s:%d HTTP/1.1\r\nHost: x\r\n\r\n" % (HOST.encode(), self.tls.port))
        status, _, _ = read_response(sock)
        assert status == 200
        ctx = ssl.create_default_context(cafile=str(self.proxy.bundle))
        return ctx.wrap_socket(sock, server_hostname=HOST), path.encode()


def read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one response; status 0 if the connection closed first. A 101's
    "body" is whatever followed its head."""
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, data, b""
            data += chunk
    if b"\r\n\r\n" not in data:
        return 0, data, b""
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    with contextlib.suppress(OSError):
        while status != 101 and len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, head, rest


def _server_tls(outside: Outside) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(outside.root / "outside-cert.pem", outside.root / "outside-key.pem")
    return ctx


@pytest.fixture
def env(make_proxy, outside: Outside) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    tls = _server_tls(outside)
    with (
        smuggler() as plain,
        smuggler(tls) as secure,
        echo_server() as ws_plain,
        echo_server(tls) as ws_tls,
    ):
        ports = ", ".join(str(p) for p in (plain.port, secure.port, ws_plain, ws_tls))
        proxy = make_proxy(
            POLICY.replace("PORTS", ports), overrides={HOST: ["127.0.0.1"]}
        )
        yield Env(proxy, plain, secure, ws_plain, ws_tls)


def _request(target: bytes, extra: bytes, method: bytes = b"GET") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (method, target, HOST.encode(), extra)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "inspected-tls"])
def test_h2c_upgrade_cannot_smuggle_a_request(env: Env, tls: bool) -> None:
    sock, target = env.open(tls, "/app/x")
    sock.sendall(_request(target, H2C))
    status, _, _ = read_response(sock)
    with contextlib.suppress(OSError):
        sock.sendall(SMUGGLED)  # on the tunnel a 101 would have opened
        read_response(sock)
    sock.close()
    server = env.tls if tls else env.plain
    assert "/admin/secret" not in server.paths()
    assert status == 403
    assert not any(s.path == "/app/x" for s in server.log)  # refused before it left
    (event,) = env.proxy.sink.of("proxy.deny", host=HOST, path="/app/x")
    assert event["protocol"] == "h2c" and "websocket" in event["reason"]
    assert event["rule"].endswith(":4")  # the rule that allowed the path, named


@pytest.mark.parametrize(
    "extra",
    [
        b"Connection: Upgrade\r\nUpgrade: websocket, h2c\r\nSec-WebSocket-Key: " + KEY + b"\r\n",
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: websocket\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nSec-WebSocket-Key: " + KEY + b"\r\n",
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\n",
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n",  # no key
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: c2hvcnQ=\r\n",
        b"Upgrade: websocket\r\nSec-WebSocket-Key: " + KEY + b"\r\n",  # not in Connection
        b"Connection: Upgrade\r\nUpgrade: TLS/1.0\r\n",
    ],
)
def test_anything_but_a_websocket_handshake_is_refused(env: Env, extra: bytes) -> None:
    sock, target = env.open(False, "/app/x")
    sock.sendall(_request(target, extra))
    status, _, _ = read_response(sock)
    with contextlib.suppress(OSError):
        sock.sendall(SMUGGLED)
        read_response(sock)
    sock.close()
    assert status in (400, 403)
    assert env.plain.paths() == []
    assert env.proxy.sink.of("proxy.deny", host=HOST, path="/app/x")


@pytest.mark.parametrize(
    ("path", "extra", "why"),
    [
        ("/app/101-h2c", b"", "did not ask"),  # a 101 nobody asked for
        ("/app/101-h2c", WEBSOCKET, "Upgrade"),  # a 101 to another protocol
        ("/app/bad-accept", WEBSOCKET, "Sec-WebSocket-Accept"),
    ],
)
def test_a_101_that_fails_the_check_ends_the_connection(
    env: Env, path: str, extra: bytes, why: str
) -> None:
    sock, target = env.open(False, path)
    sock.sendall(_request(target, extra))
    status, _, body = read_response(sock)
    with contextlib.suppress(OSError):
        sock.sendall(SMUGGLED)
        read_response(sock)
    sock.close()
    assert status == 502, body
    assert "/admin/secret" not in env.plain.paths()
    (event,) = env.proxy.sink.of("proxy.inspect", host=HOST, path=path, status=502)
    assert why in event["reason"]


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss-inspected"])
def test_websocket_echo_through_the_proxy(env: Env, tls: bool) -> None:
    port = env.ws_tls if tls else env.ws_plain
    uri = f"{'wss' if tls else 'ws'}://{HOST}:{port}/app/echo"
    ctx = ssl.create_default_context(cafile=str(env.proxy.bundle)) if tls else None
    with connect(uri, proxy=env.proxy.url, ssl=ctx, open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        blob = os.urandom(200_000)
        ws.send(blob)
        assert ws.recv(timeout=5) == blob
    (event,) = env.proxy.sink.of("proxy.inspect", host=HOST, path="/app/echo", status=101)
    assert event["protocol"] == "websocket" and event["rule"].endswith(":4")


# -- property: only a proper websocket upgrade ever yields a tunnel ------------------------

_TOKENS = ["websocket", "h2c", "h2", "HTTP/2.0", "TLS/1.0", "websocket/13", "", "foo"]


def _cased(text: str, flips: list[bool]) -> str:
    flips = flips + [False] * len(text)
    return "".join(c.upper() if f else c.lower() for c, f in zip(text, flips, strict=False))


_flips = st.lists(st.booleans(), max_size=20)
_space = st.sampled_from(["", " ", "\t", "  "])
_token = st.builds(lambda t, f, a, b: a + _cased(t, f) + b,
                   st.sampled_from(_TOKENS), _flips, _space, _space)
_upgrade_value = st.lists(_token, min_size=1, max_size=3).map(",".join)
_conn_value = st.lists(
    st.sampled_from(["Upgrade", "upgrade", "UPGRADE", "HTTP2-Settings", "keep-alive", " upgrade "]),
    min_size=1, max_size=3,
).map(", ".join)
_key = st.one_of(
    st.binary(min_size=16, max_size=16).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["not base64!!", "c2hvcnQ=", base64.b64encode(b"x" * 17).decode(), ""]),
)


@st.composite
def _handshakes(draw: st.DrawFn) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 2))):
        headers.append((_cased("upgrade", draw(_flips)), draw(_upgrade_value)))
    for _ in range(draw(st.integers(0, 2))):
        headers.append((_cased("connection", draw(_flips)), draw(_conn_value)))
    for _ in range(draw(st.integers(0, 2))):
        headers.append(("Sec-WebSocket-Key", draw(_key)))
    if draw(st.booleans()):
        headers.append((_cased("http2-settings", draw(_flips)), "AAMAAABkAARAAAAAAAIAAAAA"))
    return draw(st.permutations(headers))


def _proper_websocket(method: str, headers: list[tuple[str, str]]) -> bool:
    """The reference: RFC 6455's client handshake, and nothing that smells of h2c."""
    def values(name: str) -> list[str]:
        return [v.strip(" \t") for n, v in headers if n.lower() == name]

    conn = [t.strip(" \t").lower() for v in values("connection") for t in v.split(",")]
    upgrades, keys = values("upgrade"), values("sec-websocket-key")
    if method != "GET" or len(upgrades) != 1 or upgrades[0].lower() != "websocket":
        return False
    if "upgrade" not in conn or "http2-settings" in conn or values("http2-settings"):
        return False
    if len(keys) != 1:
        return False
    try:
        return len(base64.b64decode(keys[0], validate=True)) == 16
    except ValueError:
        return False


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=st.sampled_from(["GET", "GET", "POST"]), headers=_handshakes())
def test_property_only_a_websocket_handshake_yields_a_tunnel(
    env: Env, method: str, headers: list[tuple[str, str]]
) -> None:
    before = len(env.plain.log)
    sock, target = env.open(False, "/app/p")
    extra = "".join(f"{n}: {v}\r\n" for n, v in headers).encode()
    sock.sendall(_request(target, extra, method.encode()))
    status, _, _ = read_response(sock)
    proper = _proper_websocket(method, headers)
    if not proper:
        with contextlib.suppress(OSError):
            sock.sendall(SMUGGLED)
            read_response(sock)
    sock.close()
    assert (status == 101) == proper, (status, headers)
    assert not [s for s in env.plain.log[before:] if s.after_upgrade or "admin" in s.path]
