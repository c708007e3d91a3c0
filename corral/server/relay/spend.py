"""Spend under ``action: platform`` (docs/spend.md "Under platform"): for a rule with
``meter:`` the relay does what the launcher's proxy does for a metered ``inspect`` rule, with
the one implementation in ``corral.spend`` (``Spend.begin`` then an ``Exchange``) on the
server's database ledger (``corral.server.budgets``).

Invariants:
- Decided after ``grant`` allowed the request and before anything goes upstream: the body is
  read whole (at most ``MAX_BODY``); an unpriced endpoint (403), a body that cannot be
  estimated (400), an exhausted budget (429) or a ledger that cannot reserve (503) is answered
  here in the provider's error shape with ``x-should-retry: false``, marked
  ``corral-relay: reply`` (the launcher passes it to the agent and audits a deny), and recorded
  as ``spend.refused``. No credential is injected and no upstream dialled for it.
- The budgets are every database budget of the run's scopes (org, team, project, agent, run)
  and the run's policy ``budgets:`` over the run's own spend, reserved in one locked
  transaction off the event loop. Renewals and settlements never block the event loop: they
  run on this module's worker threads (a settle is retried; one that never lands is charged
  in full by the server's expiry).
- Every admitted request is settled exactly once however it ends (``Exchange``): at its
  metered cost when the final usage was read, zero when it never reached the upstream or the
  upstream answered an error, else its whole reservation, flagged. Each settlement is
  recorded as ``llm.usage`` in the server's admin log (actor ``run:ID``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from corral.proxy import relay_wire as wire
from corral.proxy.relay_wire import Preamble
from corral.server.admin_log import record_now
from corral.server.budgets import DbLedger
from corral.server.db import Database
from corral.server.relay.grant import Grant
from corral.spend import (
    MAX_BODY,
    MICRO,
    Budget,
    Exchange,
    Refusal,
    Reply,
    Reservation,
    Spend,
    UsageRecord,
    error_reply,
    load_prices,
)

__all__ = ["UNMETERED", "Metered", "RelaySpend", "send_reply"]

log = logging.getLogger(__name__)
SETTLE_TRIES = 5
_DROP = frozenset({b"content-length", b"transfer-encoding", b"expect", b"accept-encoding"})


async def send_reply(send: Any, reply: Reply) -> None:
    """corral's own answer in the provider's shape, marked so the launcher passes it on."""
    await send({"type": "http.response.start", "status": reply.status,
                "headers": [*reply.headers, (wire.MARK, wire.REPLY)]})
    await send({"type": "http.response.body", "body": reply.body})


class _Ledger:
    """The run's ``DbLedger``: ``reserve`` blocks (``begin`` runs in a thread); ``renew`` and
    ``settle`` are queued to the workers, the settle with its ``llm.usage`` record."""

    def __init__(self, db: Database, pool: ThreadPoolExecutor, grant: Grant,
                 event: dict[str, Any]) -> None:
        self.db, self.pool, self.event = db, pool, event
        self.run, self.project = grant.run, grant.project
        self.ledger = DbLedger(db, grant.run)

    def reserve(self, budgets: Sequence[Budget], amount: int) -> Reservation | Refusal:
        return self.ledger.reserve(budgets, amount)

    def renew(self, reservation: Reservation) -> bool:
        self.pool.submit(self.ledger.renew, reservation)
        return True

    def settle(self, reservation: Reservation, actual: int, usage: Any = None) -> None:
        self.pool.submit(self._settle, reservation, actual, usage)

    def expire(self) -> int:
        return self.ledger.expire()

    def _settle(self, reservation: Reservation, actual: int, usage: UsageRecord | None) -> None:
        for attempt in range(SETTLE_TRIES):
            try:
                self.ledger.settle(reservation, actual, usage)
                break
            except Exception as err:  # the database away: expiry charges it in full
                log.warning("settling spend reservation %s of run %s: %s", reservation.id,
                            self.run, err)
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
        if usage is not None:
            try:
                record_now(self.db, f"run:{self.run}", "llm.usage",
                           f"{self.project}/{self.event['host']}", run=self.run,
                           **self.event, **usage.event())
            except Exception as err:
                log.warning("recording llm.usage of run %s: %s", self.run, err)


class Metered:
    """One admitted metered request: the body to send (OpenAI streams with include_usage),
    and its ``Exchange`` (None: a free endpoint, forwarded unmetered)."""

    def __init__(self, exchange: Exchange | None, body: bytes) -> None:
        self.exchange, self.body = exchange, body
        self.sent = False  # the request has started towards the upstream

    def headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The request's headers with a fresh Content-Length, asking for a plain response
        (the meter reads it unencoded)."""
        kept = [(n, v) for n, v in headers if n not in _DROP]
        return [*kept, (b"accept-encoding", b"identity"),
                (b"content-length", str(len(self.body)).encode())]

    def response(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        if self.exchange is not None:
            self.exchange.response(status, headers)

    def feed(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.feed(data)

    def finish(self) -> None:
        if self.exchange is not None:
            self.exchange.finish()

    def close(self) -> None:
        """Settle however the exchange ended (idempotent: ``finish`` may have won)."""
        if self.exchange is None:
            return
        if self.sent:
            self.exchange.abort()
        else:
            self.exchange.release()  # nothing reached the provider: nothing to charge


UNMETERED = Metered(None, b"")  # what an unmetered rule's response goes through: nothing


class RelaySpend:
    def __init__(self, db: Database, prices_file: Any = None) -> None:
        self.db = db
        self.prices = load_prices(prices_file)  # the server's configuration, never a policy's
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="corral-relay-spend")

    async def admit(self, granted: Grant, pre: Preamble, body: Any) -> Metered | Reply:
        """Read the body, then reserve (or refuse) before anything goes upstream."""
        rule = granted.decision.rule
        provider = rule.meter if rule is not None else None
        assert provider is not None
        path = pre.target
        event = {"host": pre.host, "rule": str(granted.decision.origin), "method": pre.method,
                 "path": path.partition("?")[0][:300]}
        data = await _read(body)
        if data is None:
            reply = error_reply(provider, 400, f"corral: a metered request body may have at "
                                f"most {MAX_BODY >> 20} MiB")
        else:
            budgets = [Budget(round(b.amount * MICRO), b.period, str(b.origin))
                       for b in granted.budgets]
            spend = Spend(self.prices, _Ledger(self.db, self.pool, granted, event), budgets)
            outcome = await asyncio.to_thread(spend.begin, provider, pre.method, path, data)
            if not isinstance(outcome, Reply):
                return Metered(outcome, outcome.body if outcome is not None else data)
            reply = outcome
        await asyncio.to_thread(
            record_now, self.db, f"run:{granted.run}", "spend.refused",
            f"{granted.project}/{pre.host}", run=granted.run, status=reply.status,
            reason=reply.body.decode("utf-8", "replace")[:300], **event)
        return reply


async def _read(body: Any) -> bytes | None:
    chunks, size = [], 0
    while chunk := await body.chunk():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
