"""corral's 429 (and 400/403) as the official SDKs read them: each raises its own error class
and, with its default retry policy, makes exactly one request (``x-should-retry: false``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.spend import Budget, LocalLedger, Refusal, Reply, budget_reply, error_reply


class _Server:
    def __init__(self) -> None:
        self.reply: Reply | None = None
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.hits += 1
                assert owner.reply is not None
                self.send_response(owner.reply.status)
                for name, value in owner.reply.headers:
                    self.send_header(name.decode(), value.decode())
                self.end_headers()
                self.wfile.write(owner.reply.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()


def refusal() -> Refusal:
    ledger = LocalLedger()
    budget = Budget(5_000_000, "day", "team.yaml:4")
    got = ledger.reserve([budget], 6_000_000)
    assert isinstance(got, Refusal)
    return got


def call_anthropic(url: str) -> None:
    anthropic.Anthropic(api_key="x", base_url=url).messages.create(
        model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])


def call_openai(url: str) -> None:
    openai.OpenAI(api_key="x", base_url=url + "/v1").chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_anthropic_sdk_raises_rate_limit_without_retrying(server: _Server) -> None:
    server.reply, server.hits = budget_reply("anthropic", refusal()), 0
    with pytest.raises(anthropic.RateLimitError) as err:
        call_anthropic(server.url)
    assert server.hits == 1
    assert "$5.00 per day (team.yaml:4)" in str(err.value) and "resets at" in str(err.value)
    assert err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_openai_sdk_raises_rate_limit_without_retrying(server: _Server) -> None:
    server.reply, server.hits = budget_reply("openai", refusal()), 0
    with pytest.raises(openai.RateLimitError) as err:
        call_openai(server.url)
    assert server.hits == 1
    assert err.value.code == "insufficient_quota" and "per day" in err.value.message


@pytest.mark.parametrize(("status", "a_err", "o_err"), [
    (400, anthropic.BadRequestError, openai.BadRequestError),
    (403, anthropic.PermissionDeniedError, openai.PermissionDeniedError)])
def test_other_replies_map_to_the_sdk_errors(server: _Server, status: int, a_err: type,
                                             o_err: type) -> None:
    for provider, call, err in (("anthropic", call_anthropic, a_err),
                                ("openai", call_openai, o_err)):
        server.reply, server.hits = error_reply(provider, status, "corral: no"), 0
        with pytest.raises(err):
            call(server.url)
        assert server.hits == 1


@settings(max_examples=50, deadline=None)
@given(provider=st.sampled_from(["anthropic", "openai"]), message=st.text())
def test_bodies_are_json_whatever_the_message(provider: str, message: str) -> None:
    import json

    reply = error_reply(provider, 429, message)
    body = json.loads(reply.body)
    got = body["error"]["message"]
    assert got == message and (b"x-should-retry", b"false") in reply.headers
