"""corral's own answers to a metered request, in the provider's error shape, so the agent's
SDK raises its usual exception: 429 for an exhausted budget (Anthropic ``rate_limit_error``,
OpenAI ``insufficient_quota``), 400 for a request that cannot be estimated, 403 for an
endpoint that is not priced, 503 when the budget ledger (corral server) cannot be reached.

Invariants: every reply carries ``x-should-retry: false`` (both official SDKs honour it: a
budget does not come back by retrying) and a body that is valid JSON whatever the message
holds; messages come from corral, never from the request.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from corral.spend.ledger import Refusal

__all__ = ["Reply", "budget_reply", "error_reply"]

_KINDS = {
    "anthropic": {429: "rate_limit_error", 400: "invalid_request_error", 403: "permission_error",
                  503: "overloaded_error"},
    "openai": {429: "insufficient_quota", 400: "invalid_request_error", 403: "permission_error",
               503: "server_error"},
}


class Reply(NamedTuple):
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def error_reply(provider: str, status: int, message: str) -> Reply:
    kind = _KINDS.get(provider, _KINDS["openai"])[status]
    if provider == "anthropic":
        obj: dict[str, object] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        obj = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    body = json.dumps(obj).encode()
    return Reply(status, ((b"content-type", b"application/json"),
                          (b"content-length", str(len(body)).encode()),
                          (b"x-should-retry", b"false")), body)


def budget_reply(provider: str, refusal: Refusal) -> Reply:
    return error_reply(provider, 429, refusal.message)
