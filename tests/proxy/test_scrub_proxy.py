"""Secrets reflected by the upstream never reach the agent: a real leaking endpoint
(``outside_server.py`` /reflect and /echo) behind the real proxy, reached by curl and Python
clients, over both upstream parsers, plain, chunked, split at every few bytes, compressed."""

from __future__ import annotations

import base64
import json
import secrets as pysecrets
import socket
import ssl
import urllib.request
from typing import Any

import h11
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .conftest import RunningProxy, curl

POLICY = """
name: scrub
egress:
  - host: api.corral.test
    action: inspect
    credential: tok
    tls_ca: OUTSIDE_CA
    allow_private: true
  - host: other.corral.test
    ports: [80]
    action: inspect
    credential: key
    allow_private: true
  - host: git.corral.test
    action: inspect
    credential: basic
    tls_ca: OUTSIDE_CA
    allow_private: true
  - host: ws.corral.test
    action: inspect
    tls_ca: OUTSIDE_CA
    allow_private: true
credentials:
  tok: {secret: tok, header: Authorization, format: "Bearer {secret}", env: TOK}
  key: {secret: key, header: X-Api-Key, format: "{secret}", plaintext: true}
  basic: {secret: basic, header: Authorization, format: "Basic {secret}", env: BASIC}
"""
# A '/' and a '+' so the JSON and percent-encoded forms differ from the raw one.
SECRET = "s3cr3t/" + pysecrets.token_hex(8) + "+tok"
KEY = "k3y-" + pysecrets.token_hex(8)
BASIC = base64.b64encode(b"alice:pw-" + pysecrets.token_hex(6).encode()).decode()
FAKE = "corral-placeholder-tok"
MODES = ["plain", "chunked", "split", "gzip", "deflate", "reason"]


@pytest.fixture
def proxy(make_proxy) -> RunningProxy:  # type: ignore[no-untyped-def]
    return make_proxy(POLICY, {"tok": SECRET, "key": KEY, "basic": BASIC})


def _final(out: str) -> tuple[str, str]:
    """The head (names lower-cased) and body of the last response in ``curl -i`` output: the
    proxy's CONNECT answer and interim responses come first."""
    out = out.replace("\r\n", "\n")
    while True:
        head, _, body = out.partition("\n\n")
        status = head.split("\n")[0]
        connect = status.strip() == "HTTP/1.1 200" and "\n" not in head  # the tunnel's answer
        if status.startswith("HTTP/1.1 1") or connect:
            out = body
            continue
        lines = head.split("\n")
        pairs = (h.partition(":") for h in lines[1:])
        named = [lines[0]] + [f"{n.lower()}:{v}" for n, _, v in pairs]
        return "\n".join(named), body


def _no_secret(*texts: str | bytes) -> None:
    for text in texts:
        data = text.encode("latin-1") if isinstance(text, str) else text
        for secret in (SECRET, KEY, BASIC, "alice:pw-"):
            assert secret.encode() not in data, (secret, data[:2000])


def _audited(proxy: RunningProxy, binding: str, where: str) -> int:
    return sum(e["count"] for e in proxy.sink.of("credential.scrub", binding=binding, where=where))


def _secret_events_clean(proxy: RunningProxy) -> None:
    _no_secret(json.dumps(proxy.sink.events))


@pytest.mark.parametrize("mode", MODES)
def test_curl_sees_the_placeholder_not_the_secret(proxy: RunningProxy, mode: str) -> None:
    done = curl(proxy, "-i", f"https://api.corral.test/reflect?mode={mode}")
    assert done.returncode == 0, done.stderr
    _no_secret(done.stdout)
    head, body = _final(done.stdout)
    assert f"x-echo-authorization: Bearer {FAKE}" in head
    assert f"Authorization: Bearer {FAKE}\n" in body  # decoded too, for gzip and deflate
    assert "accept-encoding: identity" in body  # asked upstream for an unencoded body
    if mode == "reason":
        assert head.startswith(f"HTTP/1.1 200 Bearer {FAKE}")
    assert "content-encoding" not in head.lower()
    assert proxy.sink.of("credential.inject", binding="tok", host="api.corral.test")
    assert _audited(proxy, "tok", "header") == (2 if mode == "reason" else 1)
    assert _audited(proxy, "tok", "body") == 1
    _secret_events_clean(proxy)


def test_compression_the_agent_asked_for_is_undone(proxy: RunningProxy) -> None:
    done = curl(proxy, "--compressed", "-i", "https://api.corral.test/reflect?mode=gzip")
    assert done.returncode == 0, done.stderr
    _no_secret(done.stdout)
    head, body = _final(done.stdout)
    assert f"Authorization: Bearer {FAKE}\n" in body and "accept-encoding: identity" in body
    assert "content-encoding" not in head


def test_undecodable_encoding_is_refused(proxy: RunningProxy) -> None:
    done = curl(proxy, "-i", "https://api.corral.test/reflect?mode=br")
    head, body = _final(done.stdout)
    assert head.startswith("HTTP/1.1 502"), done.stdout
    assert "Content-Encoding br" in body
    _no_secret(done.stdout)
    assert proxy.sink.of("proxy.inspect", host="api.corral.test", status=502)


def test_json_echo_scrubbed_while_upstream_got_the_secret(proxy: RunningProxy) -> None:
    """The /echo route also hex-encodes what it received: the upstream had the real secret,
    the JSON the agent reads has the placeholder in its place."""
    done = curl(proxy, "https://api.corral.test/echo", "-H", f"Authorization: Bearer {FAKE}")
    _no_secret(done.stdout)
    echo = json.loads(done.stdout)
    received = {k.lower(): bytes.fromhex(v).decode() for k, v in echo["headers_hex"]}
    assert received["authorization"] == f"Bearer {SECRET}"
    assert ["Authorization", f"Bearer {FAKE}"] in echo["headers"]


def test_python_clients(proxy: RunningProxy) -> None:
    ctx = ssl.create_default_context(cafile=str(proxy.bundle))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=10) as client:
        for mode in MODES:
            got = client.get(f"https://api.corral.test/reflect?mode={mode}")
            assert got.status_code == 200
            _no_secret(got.content, json.dumps(dict(got.headers)), got.reason_phrase)
            assert got.headers["x-echo-authorization"] == f"Bearer {FAKE}"
            assert f"Bearer {FAKE}" in got.text
        # The agent's own Accept-Encoding (httpx sends gzip, deflate) is replaced.
        assert "accept-encoding: identity" in client.get(
            "https://api.corral.test/reflect?mode=plain").text
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy.url}), urllib.request.HTTPSHandler(context=ctx)
    )
    with opener.open("https://api.corral.test/reflect?mode=split", timeout=10) as resp:
        data = resp.read()
        _no_secret(data, str(resp.headers))
        assert f"Bearer {FAKE}".encode() in data
    _secret_events_clean(proxy)


def test_h11_path_expect_and_head(proxy: RunningProxy) -> None:
    """Requests with Expect and HEAD go through the h11 upstream: scrubbed there too."""
    done = curl(proxy, "-i", "-H", "Expect: 100-continue", "--data-binary", "x" * 5000,
                "https://api.corral.test/reflect?mode=chunked")
    assert done.returncode == 0, done.stderr
    _no_secret(done.stdout)
    head, body = _final(done.stdout)
    assert f"x-echo-authorization: Bearer {FAKE}" in head
    assert f"Authorization: Bearer {FAKE}\n" in body
    only = curl(proxy, "-I", "https://api.corral.test/reflect?mode=plain")
    assert only.returncode == 0, only.stderr
    _no_secret(only.stdout)
    assert f"x-echo-authorization: Bearer {FAKE}" in _final(only.stdout)[0]


def _raw(proxy: RunningProxy, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_framing_when_lengths_change(proxy: RunningProxy) -> None:
    """The placeholder is not the secret's length: a Content-Length body is re-framed, chunked
    to an HTTP/1.1 agent (the connection stays usable) and close-delimited to HTTP/1.0."""
    req = (b"GET http://other.corral.test/reflect?mode=plain HTTP/1.1\r\n"
           b"Host: other.corral.test\r\n\r\n")
    data = _raw(proxy, req + req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    _no_secret(data)
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    for _ in range(2):
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        body = b""
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Response):
                names = {n.lower() for n, _ in event.headers}
                assert b"content-length" not in names and b"transfer-encoding" in names
                assert (b"x-echo-x-api-key", b"corral-placeholder-key") in event.headers
            elif isinstance(event, h11.Data):
                body += event.data
        assert b"X-Api-Key: corral-placeholder-key\n" in body
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
    old = _raw(proxy, b"GET http://other.corral.test/reflect?mode=plain HTTP/1.0\r\n"
                      b"Host: other.corral.test\r\n\r\n")
    _no_secret(old)
    head, _, body = old.partition(b"\r\n\r\n")
    assert b"content-length" not in head.lower() and b"connection: close" in head.lower()
    assert body.endswith(b"\n") and b"X-Api-Key: corral-placeholder-key\n" in body
    assert _audited(proxy, "key", "body") == 3


def test_basic_credential(proxy: RunningProxy) -> None:
    done = curl(proxy, "-i", "https://git.corral.test/reflect?mode=split")
    _no_secret(done.stdout)
    head, body = _final(done.stdout)
    assert "x-echo-authorization: Basic corral-placeholder-basic" in head
    assert "Authorization: Basic corral-placeholder-basic\n" in body
    assert _audited(proxy, "basic", "body") == 1


def test_responses_without_injection_are_untouched(proxy: RunningProxy) -> None:
    """No credential on the rule: nothing is scrubbed, re-framed or re-negotiated."""
    ctx = ssl.create_default_context(cafile=str(proxy.bundle))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=10) as client:
        got = client.get("https://ws.corral.test/reflect?mode=gzip",
                         headers={"authorization": "Bearer mine", "accept-encoding": "gzip"})
    assert got.headers["content-encoding"] == "gzip"
    assert int(got.headers["content-length"]) == got.num_bytes_downloaded  # as sent, encoded
    assert "authorization: Bearer mine\n" in got.text and "accept-encoding: gzip\n" in got.text
    assert not proxy.sink.of("credential.scrub") and not proxy.sink.of("credential.inject")


AWS_POLICY = """
name: aws-scrub
egress:
  - host: api.corral.test
    action: inspect
    credential: aws
    tls_ca: OUTSIDE_CA
    allow_private: true
credentials:
  aws:
    type: aws
    access_key_id: aws-id
    secret_access_key: aws-secret
    session_token: aws-token
"""
AWS = {"access_key_id": "AKIAREALKEY000000001", "secret_access_key": "real/secret+key/0001",
       "session_token": "REAL-SESSION-" + pysecrets.token_hex(20)}


def test_aws_keys_and_session_token_are_scrubbed(make_proxy: Any) -> None:
    proxy = make_proxy(AWS_POLICY, {"aws": AWS})
    url = "https://api.corral.test/reflect?mode=split"
    req = AWSRequest(method="GET", url=url, data=b"", headers={})
    creds = Credentials(proxy.env["AWS_ACCESS_KEY_ID"], proxy.env["AWS_SECRET_ACCESS_KEY"],
                        proxy.env["AWS_SESSION_TOKEN"])
    SigV4Auth(creds, "sts", "eu-west-1").add_auth(req)
    ctx = ssl.create_default_context(cafile=str(proxy.bundle))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=10) as client:
        got = client.get(url, headers=dict(req.headers.items()))
    assert got.status_code == 200
    seen = got.content + json.dumps(dict(got.headers)).encode()
    for value in AWS.values():
        assert value.encode() not in seen
    assert b"Credential=AKIACORRALPLACEHOLDR/" in got.content  # the real one was re-signed in
    assert b"X-Amz-Security-Token: corral-placeholder-aws" in got.content
    assert proxy.sink.of("credential.inject", binding="aws")
    assert _audited(proxy, "aws", "body") >= 2


WS_POLICY = """
name: ws-scrub
egress:
  - host: ws.corral.test
    ports: [PORT]
    action: inspect
    credential: key
    allow_private: true
credentials:
  key: {secret: key, header: X-Api-Key, format: "{secret}", plaintext: true}
"""


def test_websocket_101_head_is_scrubbed(make_proxy: Any) -> None:
    """A WebSocket server that reflects the credential into its 101: the agent gets the
    placeholder there (the tunnelled frames after it are not scrubbed: docs/security.md)."""
    from websockets.sync.server import ServerConnection, serve

    def reflect(conn: ServerConnection, request: Any, response: Any) -> None:
        response.headers["X-Echo-Api-Key"] = request.headers.get("X-Api-Key", "")

    def hold(ws: ServerConnection) -> None:
        for _ in ws:
            pass

    with serve(hold, "127.0.0.1", 0, process_response=reflect) as server:
        import threading

        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        proxy = make_proxy(WS_POLICY.replace("PORT", str(port)), {"key": KEY},
                           overrides={"ws.corral.test": ["127.0.0.1"]})
        request = (
            b"GET http://ws.corral.test:%d/ HTTP/1.1\r\nHost: ws.corral.test:%d\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % (port, port)
        )
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                assert chunk, head
                head += chunk
            server.shutdown()
    assert head.startswith(b"HTTP/1.1 101"), head
    _no_secret(head)
    assert b"corral-placeholder-key" in head
    assert _audited(proxy, "key", "header") == 1
