"""``corral.proxy.forward``: what an allowed request looks like when it reaches the upstream
(a real loopback server) — Host rebuilt first, hop-by-hop headers gone, body streamed, a
credential only where ``inject.plan`` allows it and recorded before the request leaves — and
that its response comes back (scrubbed when a secret went out)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.policy.types import CredentialBinding, Decision

from .unit_harness import ORIGIN, Result, allow, run_forward

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
BINDING = CredentialBinding("tok", ORIGIN, header="Authorization", format="Bearer {secret}",
                            plaintext=True)
SECRET = "S3CRET-value-123"


def _run(request: bytes, reply: bytes = OK, decision: Decision | None = None,
         binding: CredentialBinding | None = None) -> Result:
    return run_forward(request, reply, decision, binding, secrets={"tok": {"secret": SECRET}})


def _head_lines(received: bytes) -> list[bytes]:
    return received.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_host_rebuilt_first_and_hop_by_hop_removed() -> None:
    got = _run(
        b"GET /p HTTP/1.1\r\nHost: elsewhere.test\r\nConnection: keep-alive, x-drop\r\n"
        b"Keep-Alive: 5\r\nProxy-Connection: keep-alive\r\nX-Drop: 1\r\nTE: trailers\r\n"
        b"X-Keep: yes\r\n\r\n")
    assert got.ok and got.response.startswith(b"HTTP/1.1 200") and got.response.endswith(b"ok")
    lines = _head_lines(got.received[0])
    assert lines[0] == b"GET /p HTTP/1.1"
    assert lines[1].lower() == f"host: up.test:{got.up.port}".encode()
    names = [line.split(b":")[0].lower() for line in lines[1:]]
    assert names.count(b"host") == 1 and b"x-keep" in names
    for hop in (b"keep-alive", b"proxy-connection", b"x-drop", b"te"):
        assert hop not in names
    assert got.audit.kinds() == ["proxy.inspect"] and got.audit.agent_had_bytes == [False]


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=0, max_size=3000), st.booleans())
def test_body_arrives_as_sent_either_framing(body: bytes, chunked: bool) -> None:
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:7], body[7:]) if p)
        request = (b"POST /p HTTP/1.1\r\nHost: up.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + framed + b"0\r\n\r\n")
    else:
        request = b"POST /p HTTP/1.1\r\nHost: up.test\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body), body)
    got = _run(request)
    assert got.ok and got.response.endswith(b"ok")
    assert got.up.bodies == [body]


def test_credential_injected_recorded_before_it_leaves_and_scrubbed() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\necho %s" % (
        len(SECRET) + 5, SECRET.encode())
    got = _run(b"GET /p HTTP/1.1\r\nHost: up.test\r\nAuthorization: Bearer agent-own\r\n\r\n",
               reply, allow(credential="tok"), BINDING)
    auth = [line for line in _head_lines(got.received[0])
            if line.lower().startswith(b"authorization")]
    assert auth == [f"Authorization: Bearer {SECRET}".encode()]
    assert got.audit.kinds()[:2] == ["credential.inject", "proxy.inspect"]
    assert "credential.scrub" in got.audit.kinds()  # the echo was caught, and recorded
    assert got.upstream_had[0] == 0  # credential.inject recorded before the request left
    assert SECRET.encode() not in got.response and got.response.startswith(b"HTTP/1.1 200")


def test_no_credential_over_plaintext_unless_the_binding_says_so() -> None:
    got = _run(b"GET /p HTTP/1.1\r\nHost: up.test\r\nAuthorization: Bearer agent-own\r\n\r\n",
               OK, allow(credential="tok"), BINDING._replace(plaintext=False))
    assert b"Bearer agent-own" in got.received[0] and SECRET.encode() not in got.received[0]
    assert "credential.inject" not in got.audit.kinds()


def test_direct_rule_never_injects() -> None:
    got = _run(b"GET /p HTTP/1.1\r\nHost: up.test\r\n\r\n", OK, allow("direct", "tok"), BINDING)
    assert SECRET.encode() not in got.received[0]
    assert got.audit.kinds() == ["proxy.allow"]


def test_head_goes_through_h11_and_has_no_body() -> None:
    got = _run(b"HEAD /p HTTP/1.1\r\nHost: up.test\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert got.ok and got.received[0].startswith(b"HEAD /p HTTP/1.1\r\n")
    assert got.response.startswith(b"HTTP/1.1 200") and got.response.endswith(b"\r\n\r\n")


def test_expect_continue_answered_by_the_proxy_before_the_body() -> None:
    got = _run(b"POST /p HTTP/1.1\r\nHost: up.test\r\nExpect: 100-continue\r\n"
               b"Content-Length: 3\r\n\r\nabc",
               b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    assert got.ok and got.response.startswith(b"HTTP/1.1 100 ")
    assert got.response.count(b"HTTP/1.1 100") == 1  # the upstream's own 100 is not relayed
    assert got.response.index(b"HTTP/1.1 200") > 0 and got.up.bodies == [b"abc"]
