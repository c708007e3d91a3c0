"""Spend: meter LLM responses, price them, and keep budgets (docs/spend.md).

Pure functions and in-process state only (no I/O but reading the price table): the proxy and
the server's relay drive it, through ``Spend.begin`` and ``Exchange`` (``exchange.py``) or
piece by piece. Per metered request::

    api = endpoint_api("openai", method, path)        # None: not priced -> deny (unless free)
    est = estimate(prices, "openai", api, body)       # EstimateError -> 400 in provider shape
    res = ledger.reserve(budgets, est.cost)           # Refusal -> budget_reply(...) (429)
    body = add_include_usage(body)                    # openai.chat streams only
    meter = meter_for(api, response_headers); meter.feed(chunk) ...; ledger.renew(res)
    usage = meter.close()
    ledger.settle(res, price.cost(usage.tokens) if usage.complete else est.cost)

Imports nothing of corral but its own modules (``.importlinter``: the bottom layer).
"""

from __future__ import annotations

from corral.spend.exchange import Exchange, Spend, UsageRecord
from corral.spend.ledger import (
    PERIODS,
    Budget,
    Ledger,
    LedgerUnavailable,
    LocalLedger,
    Period,
    Refusal,
    Reservation,
    window_of,
)
from corral.spend.meter import Api, Meter, meter_for
from corral.spend.prices import Price, PriceError, PriceTable, load_prices
from corral.spend.replies import Reply, budget_reply, error_reply
from corral.spend.request import (
    MAX_BODY,
    Estimate,
    EstimateError,
    add_include_usage,
    endpoint_api,
    estimate,
)
from corral.spend.usage import MICRO, Tokens, Usage, format_usd

__all__ = [
    "MAX_BODY", "MICRO", "PERIODS", "Api", "Budget", "Estimate", "EstimateError", "Exchange",
    "Ledger", "LedgerUnavailable", "LocalLedger", "Meter", "Period", "Price", "PriceError",
    "PriceTable", "Refusal",
    "Reply", "Reservation", "Spend", "Tokens", "Usage", "UsageRecord", "add_include_usage",
    "budget_reply", "endpoint_api",
    "error_reply", "estimate", "format_usd", "load_prices", "meter_for", "window_of",
]
