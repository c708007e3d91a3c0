"""One metered request from the proxy's (or relay's) point of view: ``Spend.begin`` decides
and reserves, the returned ``Exchange`` meters the response and settles it exactly once.

The caller's part (issue 15, phase 2)::

    outcome = spend.begin(rule.meter, method, path, body)
    if outcome is None: forward untouched (a free endpoint such as GET /v1/models)
    elif isinstance(outcome, Reply): answer the agent with it (403/400/429), forward nothing
    else: forward outcome.body (OpenAI streams get include_usage); outcome.response(status,
          headers); outcome.feed(chunk) per chunk; outcome.finish() at the end of the body,
          outcome.abort() on any failure; audit the returned record as ``llm.usage``.

Invariants:
- A ledger that cannot answer (``LedgerUnavailable``: the server is away) refuses the request
  with a 503 in the provider's shape naming the cause; nothing goes upstream unreserved.
- Every reservation is settled exactly once: ``finish``, ``abort`` and ``release`` are
  idempotent and the first one wins. Settled at the metered cost only when the final usage
  was read; an incomplete or aborted response is charged its whole reservation (``flagged``).
  Settled at zero: a request that never left (``release``: its connection failed) and a
  response with an error status (>= 400), which the provider does not bill.
- ``feed`` renews the reservation at least every ``renew_every`` seconds, so a long stream
  keeps its reservation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from corral.spend.ledger import (
    Budget,
    Ledger,
    LedgerUnavailable,
    LocalLedger,
    Period,
    Refusal,
    Reservation,
)
from corral.spend.meter import Api, Meter, meter_for
from corral.spend.prices import PriceTable, load_prices
from corral.spend.replies import Reply, budget_reply, error_reply
from corral.spend.request import (
    Estimate,
    EstimateError,
    add_include_usage,
    endpoint_api,
    estimate,
    parse_body,
)
from corral.spend.usage import MICRO, Tokens

__all__ = ["Exchange", "Spend", "UsageRecord"]


class UsageRecord(NamedTuple):
    """The fields of an ``llm.usage`` audit event."""

    api: Api
    model: str
    known_model: bool
    tokens: Tokens
    cost: int  # micro-dollars charged
    reserved: int
    complete: bool
    flagged: bool  # charged the whole reservation: usage never arrived
    status: int | None
    request_id: str | None

    def event(self) -> dict[str, Any]:
        """Its fields of the ``llm.usage`` audit event (the caller adds host, rule, path)."""
        out: dict[str, Any] = {
            "api": self.api, "model": self.model, "input_tokens": self.tokens.input,
            "output_tokens": self.tokens.output, "cache_write_tokens": self.tokens.cache_write,
            "cache_read_tokens": self.tokens.cache_read, "cost_usd": self.cost / MICRO,
            "reserved_usd": self.reserved / MICRO, "complete": self.complete,
            "flagged": self.flagged, "known_model": self.known_model}
        if self.status is not None:
            out["status"] = self.status
        if self.request_id is not None:
            out["request_id"] = self.request_id
        return out


class Spend:
    """One sandbox's prices, ledger and budgets."""

    def __init__(self, prices: PriceTable, ledger: Ledger, budgets: Sequence[Budget]) -> None:
        self.prices, self.ledger, self.budgets = prices, ledger, tuple(budgets)

    @classmethod
    def local(cls, entries: Iterable[tuple[float, Period, str]],
              prices: PriceTable | None = None) -> Spend:
        """From a policy's ``budgets:`` as (USD, period, where) with an in-process ledger."""
        budgets = [Budget(round(usd * MICRO), period, label) for usd, period, label in entries]
        return cls(prices or load_prices(), LocalLedger(), budgets)

    def begin(self, provider: str, method: str, path: str,
              body: bytes) -> Exchange | Reply | None:
        api = endpoint_api(provider, method, path)
        if api is None:
            if self.prices.is_free(provider, method, path.partition("?")[0]):
                return None
            return error_reply(provider, 403, f"corral: {method} {path.partition('?')[0]} is "
                               f"not a priced {provider} endpoint, and this rule meters spend")
        try:
            obj = parse_body(body)
            est = estimate(self.prices, provider, api, body, obj)
        except EstimateError as err:
            return error_reply(provider, 400, f"corral cannot estimate this request: {err}")
        try:
            got = self.ledger.reserve(self.budgets, est.cost)
        except LedgerUnavailable as err:
            return error_reply(provider, 503, f"corral cannot reserve this request's cost, so "
                               f"it is refused: {err}")
        if isinstance(got, Refusal):
            return budget_reply(provider, got)
        if api == "openai.chat" and est.stream:
            body = add_include_usage(body, obj)
        return Exchange(self.ledger, api, est, got, body)


class Exchange:
    def __init__(self, ledger: Ledger, api: Api, est: Estimate, reservation: Reservation,
                 body: bytes, *, renew_every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api, self.estimate, self.reservation, self.body = api, est, reservation, body
        self._ledger, self._renew_every, self._clock = ledger, renew_every, clock
        self._renewed = clock()
        self._meter: Meter | None = None
        self._status: int | None = None
        self._record: UsageRecord | None = None

    def response(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self._status = status
        self._meter = meter_for(self.api, headers)

    def feed(self, chunk: bytes) -> None:
        if self._meter is not None:
            self._meter.feed(chunk)
        if self._clock() - self._renewed >= self._renew_every:
            self._renewed = self._clock()
            self._ledger.renew(self.reservation)

    def finish(self) -> UsageRecord:
        return self._settle(aborted=False)

    def abort(self) -> UsageRecord:
        return self._settle(aborted=True)

    def release(self) -> UsageRecord:
        """Settle at zero: the request never reached the provider (its connection failed)."""
        return self._settle(aborted=False, released=True)

    def _settle(self, *, aborted: bool, released: bool = False) -> UsageRecord:
        if self._record is not None:
            return self._record
        est, reserved = self.estimate, self.reservation.amount
        usage = self._meter.usage if self._meter is not None else None
        complete = usage is not None and usage.complete and not aborted
        tokens = usage.tokens if usage is not None else Tokens()
        if complete:
            cost = est.price.cost(tokens)
        elif released or (self._status is not None and self._status >= 400 and not aborted):
            cost = 0
        else:
            cost = reserved
        self._record = UsageRecord(
            self.api, (usage.model if usage and usage.model else est.model), est.known_model,
            tokens, cost, reserved, complete, cost == reserved and not complete, self._status,
            usage.request_id if usage else None)
        self._ledger.settle(self.reservation, cost, self._record)
        return self._record
