"""The price table and the estimate: exact micro-dollar arithmetic rounded up, snapshot names,
unknown models at the provider's dearest, overrides, and the worst case reserved."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.spend import (
    EstimateError,
    PriceError,
    Tokens,
    add_include_usage,
    endpoint_api,
    estimate,
    load_prices,
)

PRICES = load_prices()
counts = st.integers(0, 10**9)


def test_the_table_is_dated_and_covers_both_providers() -> None:
    assert PRICES.date >= "2025-01-01"
    assert PRICES.price("anthropic", "claude-sonnet-4-5") == (
        PRICES.models["anthropic"]["claude-sonnet-4-5"], True)
    assert PRICES.models["anthropic"]["claude-sonnet-4-5"].cache_read == 300_000


@settings(max_examples=300)
@given(provider=st.sampled_from(["anthropic", "openai"]), data=st.data(),
       t=st.builds(Tokens, counts, counts, counts, counts))
def test_cost_is_the_exact_sum_rounded_up(provider: str, data: st.DataObject, t: Tokens) -> None:
    name = data.draw(st.sampled_from(sorted(PRICES.models[provider])))
    price, _ = PRICES.price(provider, name)
    exact = sum(Fraction(n * p, 1_000_000) for n, p in zip(t, price[:4], strict=True))
    assert price.cost(t) - 1 < exact <= price.cost(t)


@given(name=st.sampled_from(sorted(PRICES.models["openai"])),
       suffix=st.sampled_from(["-2024-08-06", "-20250929", "-latest"]))
def test_dated_snapshots_price_as_their_model(name: str, suffix: str) -> None:
    assert PRICES.price("openai", name + suffix) == (PRICES.models["openai"][name], True)


@given(provider=st.sampled_from(["anthropic", "openai"]), model=st.text(max_size=30))
def test_unknown_models_are_never_cheaper_than_any_known(provider: str, model: str) -> None:
    price, known = PRICES.price(provider, model)
    if not known:
        for other in PRICES.models[provider].values():
            assert all(a >= b for a, b in zip(price, other, strict=True))


def test_variants_are_not_snapshots() -> None:
    assert PRICES.price("openai", "gpt-4o-audio-preview")[1] is False
    assert PRICES.price("anthropic", "claude-sonnet-4-5-evil")[1] is False


def test_override_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("date: 2099-01-01\nproviders:\n  openai:\n    models:\n      my-model: "
                    "{input: 1, output: 2, cache_write: 0, cache_read: 0.5, context: 1000, "
                    "max_output: 100}\n")
    table = load_prices(path)
    assert table.date == "2099-01-01"
    assert table.price("openai", "my-model")[0].output == 2_000_000
    assert table.price("openai", "gpt-4o")[1]  # the shipped entries stay


@pytest.mark.parametrize("bad", ["-1", "true", "'abc'", "nan", "1e30", "[1]"])
def test_bad_override_values_are_errors(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("providers:\n  openai:\n    models:\n      m: {input: " + bad + ", output: 2, "
                    "cache_write: 0, cache_read: 0, context: 1000, max_output: 100}\n")
    with pytest.raises(PriceError, match=r"models\.m\.input"):
        load_prices(path)


def test_free_endpoints() -> None:
    assert PRICES.is_free("anthropic", "GET", "/v1/models/claude-sonnet-4-5")
    assert not PRICES.is_free("anthropic", "GET", "/v1/models/a/b")
    assert not PRICES.is_free("anthropic", "GET", "/v1/models/..")
    assert not PRICES.is_free("anthropic", "POST", "/v1/models")
    assert not PRICES.is_free("openai", "POST", "/v1/batches")


@given(path=st.text(max_size=30))
def test_only_exact_paths_are_priced(path: str) -> None:
    api = endpoint_api("openai", "POST", path)
    assert api is None or path.partition("?")[0] in ("/v1/chat/completions", "/v1/responses")
    assert endpoint_api("openai", "POST", "/v1/chat/completions?x=1") == "openai.chat"
    assert endpoint_api("openai", "GET", "/v1/responses") is None
    assert endpoint_api("anthropic", "POST", "/v1/messages/") is None


def body(**kw: object) -> bytes:
    return json.dumps({"model": "claude-sonnet-4-5", "messages": [], **kw}).encode()


@settings(max_examples=200)
@given(max_tokens=st.integers(1, 10**6), size=st.integers(0, 10**6))
def test_estimate_bounds(max_tokens: int, size: int) -> None:
    raw = body(max_tokens=max_tokens, pad="x" * size)
    est = estimate(PRICES, "anthropic", "anthropic.messages", raw)
    price = est.price
    assert est.tokens.output == min(max_tokens, price.max_output)
    assert est.tokens.input == min(len(raw) // 2 + 1024 + len(raw) % 2, price.context)
    assert est.cost >= price.cost(Tokens(input=est.tokens.input, output=est.tokens.output))


@given(n=st.integers(1, 128), limit=st.integers(1, 4000))
def test_estimate_counts_n_and_every_limit(n: int, limit: int) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        raw = json.dumps({"model": "gpt-4o", "n": n, key: limit}).encode()
        est = estimate(PRICES, "openai", "openai.chat", raw)
        assert est.tokens.output == limit * n
    raw = json.dumps({"model": "gpt-4.1", "max_output_tokens": limit}).encode()
    assert estimate(PRICES, "openai", "openai.responses", raw).tokens.output == limit


def test_no_limit_means_the_model_cap_and_unknown_models_are_flagged() -> None:
    est = estimate(PRICES, "openai", "openai.chat", b'{"model": "gpt-4o"}')
    assert est.tokens.output == 16384 and est.known_model
    est = estimate(PRICES, "openai", "openai.chat", b'{"model": "gpt-9000"}')
    assert not est.known_model and est.price.output == 600_000_000


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b"{}", b'{"model": 5}', body(max_tokens=-1), body(max_tokens=0),
    body(max_tokens=1.5), body(max_tokens=True), body(max_tokens="100"),
    json.dumps({"model": "gpt-4o", "n": 0}).encode(),
    json.dumps({"model": "gpt-4o", "n": 129}).encode(), b"[" * 100_000,
])
def test_bad_requests_are_refused_with_a_reason(raw: bytes) -> None:
    api = "openai.chat" if b"gpt" in raw else "anthropic.messages"
    with pytest.raises(EstimateError) as err:
        estimate(PRICES, "openai" if "openai" in api else "anthropic", api, raw)  # type: ignore[arg-type]
    assert str(err.value)


def test_a_body_too_large_is_refused() -> None:
    with pytest.raises(EstimateError, match="larger than"):
        estimate(PRICES, "anthropic", "anthropic.messages", b" " * (32 << 20) + b"{}")


@given(extra=st.dictionaries(st.sampled_from(["temperature", "user", "stream_options"]),
                             st.one_of(st.none(), st.integers(), st.dictionaries(
                                 st.sampled_from(["include_usage", "x"]), st.booleans()))),
       stream=st.sampled_from([True, False, None, "true"]),
       encoding=st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-8-sig", " utf-8"]))
def test_include_usage_is_added_to_streams_only(extra: dict[str, object], stream: object,
                                                encoding: str) -> None:
    """Any encoding json reads (the byte splice applies only to UTF-8 starting with "{"),
    and never a second ``stream_options`` member (a provider might read the other one)."""
    text = json.dumps({"model": "gpt-4o", "stream": stream, **extra})
    raw = (" \n" + text).encode("utf-8") if encoding == " utf-8" else text.encode(encoding)
    out = add_include_usage(raw)
    before, after = json.loads(raw), json.loads(out, object_pairs_hook=_no_duplicates)
    opts = before.get("stream_options")
    if stream is True and (opts is None or isinstance(opts, dict)):
        assert after["stream_options"]["include_usage"] is True
        assert {k: v for k, v in after.items() if k != "stream_options"} == {
            k: v for k, v in before.items() if k != "stream_options"}
        assert {k: v for k, v in after["stream_options"].items() if k != "include_usage"} == {
            k: v for k, v in (opts or {}).items() if k != "include_usage"}
    else:
        assert out is raw


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    assert len({k for k, _ in pairs}) == len(pairs), f"duplicate member in {pairs}"
    return dict(pairs)


def test_include_usage_keeps_the_request_bytes() -> None:
    """The member is spliced in: what the agent sent reaches the provider byte for byte (no
    re-encoding of numbers, escapes or spacing)."""
    raw = b'{"model": "gpt-4o", "stream": true, "temperature": 1.0e0, "user": "\\u00e9"}'
    out = add_include_usage(raw)
    assert out == b'{"stream_options":{"include_usage":true},' + raw[1:]
    assert json.loads(out)["stream_options"] == {"include_usage": True}


@given(key=st.sampled_from(["model", "max_tokens", "n", "stream", "messages", "x"]),
       escaped=st.booleans(), nested=st.booleans(), value=st.integers(1, 10**6),
       api=st.sampled_from(["openai.chat", "anthropic.messages"]))
def test_a_repeated_key_is_refused_however_it_is_spelled(
        key: str, escaped: bool, nested: bool, value: int, api: str) -> None:
    """json keeps the last copy, a provider may read the first: a body that reads two ways
    cannot be priced. A key spelled with escapes ("m\\u006fdel") is the same key."""
    spelled = "".join(f"\\u{ord(c):04x}" for c in key) if escaped else key
    pairs = f'"{key}": {value}, "{spelled}": 1'
    once = '{"model": "gpt-4o", "max_tokens": 5, "messages": [{"x": 1}]}'
    raw = (once.replace('"x": 1', pairs) if nested else
           '{"model": "gpt-4o", "max_tokens": 5, ' + pairs + "}")
    provider = api.split(".")[0]
    estimate(PRICES, provider, api, once.encode())  # type: ignore[arg-type]
    with pytest.raises(EstimateError, match="repeats the key"):
        estimate(PRICES, provider, api, raw.encode())  # type: ignore[arg-type]
