"""What a metered request is and what it may cost at most: the endpoint's API, the OpenAI
``include_usage`` rewrite, and the worst-case estimate reserved before it goes upstream.

The estimate (documented in docs/spend.md):
- input tokens = body bytes / 2 (rounded up) + 1,024 (the provider's own prompt additions,
  e.g. Anthropic's tool-use system prompt), capped at the model's context window (the provider
  refuses a longer prompt) and priced at the dearer of the input and cache-write prices;
- output tokens = ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` (the
  largest one given) times ``n``, or the model's output cap when none is given; a value above
  the cap is capped (the provider refuses or clamps it).

Invariants:
- Only the exact paths of ``ENDPOINTS`` are priced APIs; anything else (another spelling, a
  trailing slash, a percent-escape) is not, and a metered rule denies it unless the price
  table lists it as free: unknown is denied, never guessed.
- A body that is not a JSON object, larger than ``MAX_BODY``, without a string ``model``, or
  with a negative, fractional, boolean or non-numeric limit or ``n`` is refused
  (``EstimateError``, a one-line reason), never estimated as zero.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from corral.spend.meter import Api
from corral.spend.prices import Price, PriceTable
from corral.spend.usage import Tokens

__all__ = ["ENDPOINTS", "MAX_BODY", "Estimate", "EstimateError", "add_include_usage",
           "endpoint_api", "estimate", "parse_body"]

MAX_BODY = 32 << 20  # Anthropic's own request limit; OpenAI's is lower
ENDPOINTS: dict[tuple[str, str, str], Api] = {
    ("anthropic", "POST", "/v1/messages"): "anthropic.messages",
    ("openai", "POST", "/v1/chat/completions"): "openai.chat",
    ("openai", "POST", "/v1/responses"): "openai.responses",
}
_OVERHEAD = 1024
_MAX_N = 128  # OpenAI's own limit for n
_LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_SPLICE = b'{"stream_options":{"include_usage":true},'


class EstimateError(ValueError):
    """A metered request that cannot be estimated; the text says why (for the 400 body)."""


class Estimate(NamedTuple):
    model: str
    price: Price
    known_model: bool
    tokens: Tokens  # the worst case: input, output
    cost: int  # micro-dollars
    stream: bool


def endpoint_api(provider: str, method: str, path: str) -> Api | None:
    """The priced API at ``path`` (the query is ignored), or None."""
    return ENDPOINTS.get((provider, method, path.partition("?")[0]))


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last copy of a repeated key, some providers' parsers the first: an agent
    # could have "max_tokens" estimated at 1 and answered at 100,000 (~5 us per 10 KB body).
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Repeated(key)
            seen.add(key)
    return obj


def parse_body(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise EstimateError(f"the request body ({len(body)} bytes) is larger than the "
                            f"{MAX_BODY >> 20} MiB a metered request may have")
    try:
        obj = json.loads(body, object_pairs_hook=_unique)
    except _Repeated as err:
        raise EstimateError(f"the request body repeats the key {err.key!r}: providers differ "
                            "on which copy counts, so it cannot be priced (send it once)") from None
    except (ValueError, RecursionError):
        raise EstimateError("the request body is not JSON") from None
    if not isinstance(obj, dict):
        raise EstimateError("the request body is not a JSON object")
    return obj


def _whole(obj: dict[str, Any], key: str, low: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int or value < low:
        raise EstimateError(f"{key} must be a whole number of at least {low}, not {value!r}")
    return value


def estimate(prices: PriceTable, provider: str, api: Api, body: bytes,
             obj: dict[str, Any] | None = None) -> Estimate:
    """``obj``: the body already parsed by ``parse_body`` (saves a second parse)."""
    obj = parse_body(body) if obj is None else obj
    model = obj.get("model")
    if not isinstance(model, str) or not model or len(model) > 200:
        raise EstimateError("the request names no model (a string 'model')")
    price, known = prices.price(provider, model)
    limits = [n for key in _LIMIT_KEYS if (n := _whole(obj, key, 1)) is not None]
    output = min(max(limits), price.max_output) if limits else price.max_output
    n = _whole(obj, "n", 1) if api == "openai.chat" else None
    if n is not None and n > _MAX_N:
        raise EstimateError(f"n must be at most {_MAX_N}, not {n}")
    output *= n or 1
    input_tokens = min(-(-len(body) // 2) + _OVERHEAD, price.context)
    # Input at the dearer of the input and cache-write prices; rounded up as ``Price.cost``.
    micro = input_tokens * max(price.input, price.cache_write) + output * price.output
    return Estimate(model, price, known, Tokens(input_tokens, output), -(-micro // 1_000_000),
                    obj.get("stream") is True)


def add_include_usage(body: bytes, obj: dict[str, Any] | None = None) -> bytes:
    """An OpenAI Chat Completions streaming request made to report its usage in a final chunk:
    ``stream_options.include_usage`` set to true. Anything else is returned unchanged (the
    same object), including a body that is not JSON (the estimate refuses that already).
    ``obj``: the body already parsed (it is changed in place when the body is rewritten)."""
    if obj is None:
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            return body
    if not isinstance(obj, dict) or obj.get("stream") is not True:
        return body
    if "stream_options" not in obj and body[:1] == b"{" and body[1:2] != b"\x00":
        # The usual case, without re-encoding the body (a third of the spend work per request):
        # the member goes in first. The key is absent, so no duplicate can arise, and a body
        # that starts with "{" and no NUL after it is UTF-8 (json's encoding detection).
        obj["stream_options"] = {"include_usage": True}
        return _SPLICE + body[1:]
    options = obj.get("stream_options")
    if options is None:
        options = obj["stream_options"] = {}
    if not isinstance(options, dict) or options.get("include_usage") is True:
        return body
    options["include_usage"] = True
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
