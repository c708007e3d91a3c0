"""``Spend.begin`` + ``Exchange``: the whole per-request flow the proxy drives, against real
wire-format streams: concurrent admission never overshoots, running requests finish when the
budget is gone, incomplete usage is charged in full and flagged, renewal keeps long streams."""

from __future__ import annotations

import json
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.spend import (
    Budget,
    Exchange,
    LocalLedger,
    Reply,
    Spend,
    Tokens,
    load_prices,
)
from tests.spend.streams import EVENTS, sse

PRICES = load_prices()
SSE = [(b"content-type", b"text/event-stream")]


def request(max_tokens: int = 1000, stream: bool = True) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "max_tokens": max_tokens, "stream": stream,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()


def one_cost() -> int:
    spend = Spend(PRICES, LocalLedger(), [])
    ex = spend.begin("openai", "POST", "/v1/chat/completions", request())
    assert isinstance(ex, Exchange)
    return ex.estimate.cost


def test_32_concurrent_streams_against_a_budget_that_fits_10() -> None:
    budget = Budget(one_cost() * 10 + one_cost() // 2, "run", "team.yaml:3")
    spend = Spend(PRICES, LocalLedger(), [budget])
    results: list[Exchange | Reply | None] = [None] * 32
    go, admitted = threading.Barrier(32), threading.Barrier(32)
    stream = sse(EVENTS["openai.chat"](["hello"] * 50, Tokens(input=20, output=300)))

    def client(i: int) -> None:
        go.wait()
        got = spend.begin("openai", "POST", "/v1/chat/completions", request())
        results[i] = got
        admitted.wait()  # every admission decided while the admitted ones still stream
        if isinstance(got, Exchange):
            got.response(200, SSE)
            for k in range(0, len(stream), 1000):
                got.feed(stream[k:k + 1000])
            record = got.finish()
            assert record.complete and not record.flagged

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    exchanges = [r for r in results if isinstance(r, Exchange)]
    refused = [r for r in results if isinstance(r, Reply)]
    assert len(exchanges) == 10 and len(refused) == 22
    assert all(r.status == 429 and b"insufficient_quota" in r.body for r in refused)
    spent, held = spend.ledger.spent(budget)  # type: ignore[attr-defined]
    assert held == 0 and spent == 10 * PRICES.price("openai", "gpt-4o-mini")[0].cost(
        Tokens(input=20, output=300)) <= budget.amount
    assert all(b'"include_usage":true' in e.body for e in exchanges)


def test_unpriced_free_and_bad_requests() -> None:
    spend = Spend.local([(5, "run", "p.yaml:9")])
    for path in ("/v1/batches", "/v1/files", "/v1/realtime", "/v1//chat/completions",
                 "/v1/chat/completions/"):
        reply = spend.begin("openai", "POST", path, request())
        assert isinstance(reply, Reply) and reply.status == 403
    assert spend.begin("anthropic", "GET", "/v1/models/claude-haiku-4-5?x=1", b"") is None
    reply = spend.begin("anthropic", "POST", "/v1/messages", b'{"model": "x", "max_tokens": -1}')
    assert isinstance(reply, Reply) and reply.status == 400
    assert b"invalid_request_error" in reply.body
    assert spend.ledger.spent(spend.budgets[0]) == (0, 0)  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(api=st.sampled_from(sorted(EVENTS)), cut=st.floats(0, 1), status=st.sampled_from(
    [200, 200, 400, 529]), abort=st.booleans())
def test_settled_once_and_incomplete_is_charged_in_full(api: str, cut: float, status: int,
                                                        abort: bool) -> None:
    provider, path = {"anthropic.messages": ("anthropic", "/v1/messages"),
                      "openai.chat": ("openai", "/v1/chat/completions"),
                      "openai.responses": ("openai", "/v1/responses")}[api]
    spend = Spend.local([(100, "day", "p.yaml:1")])
    body = json.dumps({"model": "claude-haiku-4-5" if provider == "anthropic" else "gpt-4.1",
                       "max_tokens": 500, "stream": True}).encode()
    ex = spend.begin(provider, "POST", path, body)
    assert isinstance(ex, Exchange)
    data = sse(EVENTS[api](["x"] * 5, Tokens(10, 20, 0, 0)))
    ex.response(status, SSE)
    ex.feed(data[:int(len(data) * cut)])
    record = ex.abort() if abort else ex.finish()
    assert (ex.finish(), ex.abort()) == (record, record)  # the first settlement stands
    spent, held = spend.ledger.spent(spend.budgets[0])  # type: ignore[attr-defined]
    assert held == 0 and spent == record.cost
    if record.complete:
        assert record.cost == ex.estimate.price.cost(record.tokens) <= record.reserved
    elif status >= 400 and not abort:
        assert record.cost == 0
    else:
        assert record.cost == record.reserved and record.flagged


def test_a_long_stream_keeps_its_reservation() -> None:
    now = [0.0]
    ledger = LocalLedger(ttl=60, clock=lambda: now[0])
    spend = Spend(PRICES, ledger, [Budget(10**9, "run", "p:1")])
    ex = spend.begin("openai", "POST", "/v1/chat/completions", request())
    assert isinstance(ex, Exchange)
    ex._clock, ex._renewed = (lambda: now[0]), 0.0  # type: ignore[method-assign]
    ex.response(200, SSE)
    for _ in range(200):  # 2.5 hours of stream, a chunk every 45 s, each well past the TTL
        now[0] += 45
        ex.feed(b"data: {}\n\n")
        assert ledger.expire() == 0
    assert ledger.renew(ex.reservation)
