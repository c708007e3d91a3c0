"""HTTPS through CONNECT: inspect (per-sandbox CA, injection), direct tunnels, and the attacks."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import httpx
import pytest

from .conftest import Outside, RunningProxy, curl, wait_for

POLICY = """
name: tls
egress:
  - host: api.corral.test
    action: inspect
    credential: tok
    tls_ca: OUTSIDE_CA
    allow_private: true
  - host: git.corral.test
    action: inspect
    tls_ca: OUTSIDE_CA
    allow_private: true
  - host: ws.corral.test
    action: inspect
    tls_ca: OUTSIDE_CA
  - host: other.corral.test
    action: direct
    allow_private: true
  - host: OUTSIDE_IP
    action: inspect
    tls_ca: OUTSIDE_CA
  - host: meta.corral.test
    action: direct
credentials:
  tok: {secret: tok, header: Authorization, format: "Bearer {secret}", env: TOK}
"""
SECRET = "SECRET-TOKEN-9f1c"


@pytest.fixture
def proxy(make_proxy) -> RunningProxy:  # type: ignore[no-untyped-def]
    return make_proxy(
        POLICY, {"tok": SECRET}, overrides={"meta.corral.test": ["169.254.169.254"]}
    )


def _headers(text: str, name: str) -> list[str]:
    # headers_hex: what the upstream received (the proxy scrubs the secret from what it echoes)
    echo = json.loads(text)["headers_hex"]
    return [bytes.fromhex(v).decode("latin-1") for k, v in echo if k.lower() == name.lower()]


def test_inspect_injects_for_curl_urllib_httpx(proxy: RunningProxy) -> None:
    agent_value = proxy.env["TOK"]
    done = curl(proxy, "https://api.corral.test/echo", "-H", f"Authorization: Bearer {agent_value}")
    assert done.returncode == 0, done.stderr
    assert _headers(done.stdout, "Authorization") == [f"Bearer {SECRET}"]
    ctx = ssl.create_default_context(cafile=str(proxy.bundle))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy.url}), urllib.request.HTTPSHandler(context=ctx)
    )
    with opener.open("https://api.corral.test/echo", timeout=10) as resp:
        assert _headers(resp.read().decode(), "Authorization") == [f"Bearer {SECRET}"]
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=10) as client:
        for _ in range(2):  # keep-alive inside the intercepted connection
            got = client.get("https://api.corral.test/echo", headers={"authorization": "x"})
            assert _headers(got.text, "Authorization") == [f"Bearer {SECRET}"]
    assert len(proxy.sink.of("credential.inject", binding="tok", host="api.corral.test")) == 4
    # response records of injected requests are written after the response (RelayAudit.send)
    assert wait_for(lambda: len(proxy.sink.of("proxy.inspect", host="api.corral.test",
                                              status=200)) == 4)
    for _kind, fields in proxy.sink.events:
        assert SECRET not in json.dumps(fields)


def test_placeholder_to_unbound_host_is_not_replaced(proxy: RunningProxy) -> None:
    placeholder = proxy.env["TOK"]
    done = curl(proxy, "https://git.corral.test/echo", "-H", f"Authorization: Bearer {placeholder}")
    assert _headers(done.stdout, "Authorization") == [f"Bearer {placeholder}"]
    assert not proxy.sink.of("credential.inject")


def test_direct_tunnel_passes_server_cert_through(proxy: RunningProxy, outside: Outside) -> None:
    done = curl(proxy, "--cacert", str(outside.ca), "https://other.corral.test/echo")
    assert done.returncode == 0, done.stderr
    assert _headers(done.stdout, "Authorization") == []
    assert proxy.sink.of("proxy.allow", host="other.corral.test", mode="direct")
    # The sandbox CA is not involved: with only the sandbox bundle the real cert fails.
    bad = curl(proxy, "https://other.corral.test/echo")
    assert bad.returncode == 60


def test_ip_literal_host_gets_ip_san(proxy: RunningProxy, outside: Outside) -> None:
    done = curl(proxy, f"https://{outside.ip}/echo")
    assert done.returncode == 0, done.stderr
    assert proxy.sink.of("proxy.inspect", host=outside.ip, status=200)


def _connect(proxy: RunningProxy, target: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def test_sni_must_match_connect_host(proxy: RunningProxy) -> None:
    sock, head = _connect(proxy, "other.corral.test:443")
    assert head.startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        ctx.wrap_socket(sock, server_hostname="api.corral.test").recv(1)
    sock.close()
    (event,) = proxy.sink.of("proxy.deny", host="other.corral.test")
    assert "does not match" in event["reason"]
    assert not proxy.sink.of("proxy.allow", host="other.corral.test")


def test_host_header_must_match_inside_tunnel(proxy: RunningProxy) -> None:
    done = curl(proxy, "-i", "https://api.corral.test/echo", "-H", "Host: other.corral.test")
    assert "HTTP/1.1 403" in done.stdout, done.stdout
    assert "does not match" in done.stdout
    assert not proxy.sink.of("credential.inject")


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("api.corral.test:8443", "default deny"),  # port not in the rule's ports
        ("evil.corral.test:443", "default deny"),
        ("meta.corral.test:443", "169.254.0.0/16"),  # name resolving to cloud metadata
        ("ws.corral.test:443", "10.0.0.0/8"),  # private answer without allow_private
        ("[::ffff:127.0.0.1]:443", "default deny"),
    ],
)
def test_connect_refusals(proxy: RunningProxy, target: str, why: str) -> None:
    sock, head = _connect(proxy, target)
    sock.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert b"X-Corral-Decision: deny" in head
    assert proxy.sink.of("proxy.deny", method="CONNECT")
    assert why in proxy.sink.of("proxy.deny", method="CONNECT")[0]["reason"]


def test_refused_connect_names_the_rule_in_its_status_line(proxy: RunningProxy) -> None:
    """urllib (and curl) show only the status line of a refused CONNECT: it says why."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy.url}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(proxy.bundle))))
    with pytest.raises(OSError) as info:
        opener.open("https://evil.corral.test/x", timeout=10)
    assert "Tunnel connection failed: 403 Forbidden by corral (default deny)" in str(info.value)
    sock, head = _connect(proxy, "ws.corral.test:443")
    sock.close()
    assert head.startswith(b"HTTP/1.1 403 Forbidden by corral (rule "), head


def test_redirect_to_denied_host(proxy: RunningProxy) -> None:
    done = curl(proxy, "-L", "https://api.corral.test/redirect?to=https://evil.corral.test/x")
    assert done.returncode == 56  # CONNECT refused with 403
    assert proxy.sink.of("proxy.inspect", host="api.corral.test", status=302)
    assert proxy.sink.of("proxy.deny", host="evil.corral.test")


def test_git_clone_over_https(proxy: RunningProxy, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **proxy.env}
    done = subprocess.run(
        ["git", "clone", "-q", "https://git.corral.test/git/repo.git", str(tmp_path / "c")],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c" / "README").read_text() == "hello from the outside\n"
    assert proxy.sink.of("proxy.inspect", host="git.corral.test", method="POST", status=200)


def test_websocket_upgrade_passes_through_after_policy(proxy: RunningProxy) -> None:
    sock, head = _connect(proxy, "api.corral.test:443")
    assert head.startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(proxy.bundle))
    tls = ctx.wrap_socket(sock, server_hostname="api.corral.test")
    tls.sendall(b"GET /ws HTTP/1.1\r\nHost: api.corral.test\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nhello\n")
    data = b""
    while b"HELLO\n" not in data:
        chunk = tls.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 101")
    tls.sendall(b"bye\n")
    while b"BYE\n" not in data:
        chunk = tls.recv(4096)
        assert chunk, data
        data += chunk
    tls.close()
    assert proxy.sink.of("proxy.inspect", host="api.corral.test", path="/ws", status=101)


def test_upstream_corporate_proxy_carries_all_egress(make_proxy) -> None:  # type: ignore[no-untyped-def]
    corporate = make_proxy(
        "name: corp\negress:\n  - {host: api.corral.test, ports: [443, 80], action: direct,"
        " allow_private: true}\n"
    )
    proxy = make_proxy(POLICY, {"tok": SECRET}, upstream_proxy=corporate.url)
    done = curl(proxy, "https://api.corral.test/echo")
    assert done.returncode == 0, done.stderr
    assert _headers(done.stdout, "Authorization") == [f"Bearer {SECRET}"]
    assert proxy.sink.of("proxy.inspect", host="api.corral.test", status=200)
    # The corporate proxy saw a tunnel (TLS to the real server stays end to end from corral).
    assert corporate.sink.of("proxy.allow", host="api.corral.test", mode="direct")


@pytest.mark.parametrize(
    "target",
    ["127.0.0.1:443", "[::1]:443", "[::ffff:127.0.0.1]:443", "[::ffff:OUTSIDE_IP]:443",
     "OUTSIDE_IP:443", "loop.corral.test:443"],
)
def test_catch_all_rule_never_reaches_private_addresses(
    make_proxy, outside: Outside, target: str  # type: ignore[no-untyped-def]
) -> None:
    proxy = make_proxy("name: all\negress:\n  - {host: '*', action: direct}\n",
                       overrides={"loop.corral.test": ["127.0.0.1", "::1"]})
    sock, head = _connect(proxy, target.replace("OUTSIDE_IP", outside.ip))
    sock.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    (event,) = proxy.sink.of("proxy.deny", method="CONNECT")
    assert "private" in event["reason"] and "allow_private" in event["reason"]
    assert not proxy.sink.of("proxy.allow")


def test_chunked_upload_head_and_keepalive_inside_tls(proxy: RunningProxy) -> None:
    ctx = ssl.create_default_context(cafile=str(proxy.bundle))

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(5):
            yield b"y" * 10_000

    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=10) as client:
        up = client.post("https://api.corral.test/echo", content=chunks())
        assert up.json()["body_len"] == 50_000
        head = client.head("https://api.corral.test/echo")
        assert head.status_code == 200 and head.content == b""
        again = client.get("https://api.corral.test/echo")
        assert again.json()["method"] == "GET"
    assert wait_for(lambda: len(proxy.sink.of("proxy.inspect", host="api.corral.test")) == 3)
