"""Requests under a rule with ``meter:`` (docs/spend.md): read the body, estimate and reserve
its worst-case cost before anything goes upstream, and audit the settled usage.

Invariants:
- Decided before any credential is injected or any byte goes upstream: an unpriced endpoint
  (403), a body that cannot be estimated (400) or an exhausted budget (429) is answered here
  in the provider's error shape (``x-should-retry: false``), audited as ``proxy.deny``, and
  the upstream never sees the request. In a project run the reservation is also made on
  corral server (``spend_server``); a server that cannot answer is a 503 naming why.
- A metered request's body is read whole (at most ``MAX_BODY``; more is refused and the
  connection closed) because the estimate needs it; it is then sent with a fresh
  Content-Length, asking for an unencoded response so the meter can read it.
- Every admitted request ends in exactly one ``llm.usage`` event, however it ends (the
  ``Exchange`` settles once; ``settle`` is called from a ``finally``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from corral.policy.types import Decision
from corral.proxy.agent import AgentConnection
from corral.proxy.response_scrub import identity
from corral.spend import MAX_BODY, Exchange, Reply, Spend, error_reply

__all__ = ["admit", "build_spend", "settle"]

_DROP = frozenset({b"content-length", b"transfer-encoding", b"expect"})


def build_spend(policy: Any, prices_file: Any = None, *, server: bool = False) -> Spend | None:
    """The sandbox's ``Spend`` if any rule meters, with the policy's budgets; else None.
    ``server``: a project run, whose budgets are also kept by corral server
    (``spend_server.ServerLedger``, configured once the run registered)."""
    if not any(getattr(r, "meter", None) for r in getattr(policy, "rules", ())):
        return None
    from corral.spend import load_prices

    entries = [(b.amount, b.period, str(b.origin)) for b in getattr(policy, "budgets", ())]
    spend = Spend.local(entries, load_prices(prices_file))
    if server:
        from corral.proxy.spend_server import ServerLedger

        spend.ledger = ServerLedger()
    return spend


async def _read_body(agent: AgentConnection) -> bytes | None:
    chunks, size = [], 0
    while (chunk := await agent.next_body_chunk()) is not None:
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _answer(agent: AgentConnection, reply: Reply, decision: Decision,
                  fields: dict[str, Any]) -> None:
    await agent.ctx.audit.emit("proxy.deny", rule=decision.origin, status=reply.status,
                               reason=reply.body.decode("utf-8", "replace")[:300], **fields)
    agent.response.head(reply.status, list(reply.headers), b"")
    agent.response.data(reply.body)
    agent.response.end()
    await agent.client.drain()


async def admit(
    agent: AgentConnection, spend: Spend, decision: Decision, fields: dict[str, Any],
    headers: list[tuple[bytes, bytes]],
) -> tuple[Exchange | None, list[tuple[bytes, bytes]], bytes] | bool:
    """(exchange or None for a free endpoint, headers, body) to forward; or the value
    ``forward`` returns when the request was answered here."""
    provider = decision.rule.meter if decision.rule is not None else None
    assert provider is not None
    if agent.waiting_for_100_continue:
        agent.response.informational(100, [])
        await agent.client.drain()
    body = await _read_body(agent)
    if body is None:
        reply = error_reply(provider, 400, f"corral: a metered request body may have at most "
                            f"{MAX_BODY >> 20} MiB")
        agent.response.keep_alive = False
        await _answer(agent, reply, decision, fields)
        return False
    if getattr(spend.ledger, "blocking", False):  # a server ledger: off the event loop
        outcome = await asyncio.to_thread(spend.begin, provider, fields["method"],
                                          fields["path"], body)
    else:
        outcome = spend.begin(provider, fields["method"], fields["path"], body)
    if isinstance(outcome, Reply):
        await _answer(agent, outcome, decision, fields)
        return agent.reusable
    if outcome is not None:
        body = outcome.body
    kept = identity([(n, v) for n, v in headers if n not in _DROP])
    kept.append((b"content-length", str(len(body)).encode()))
    return outcome, kept, body


async def settle(agent: AgentConnection, exchange: Exchange, decision: Decision,
                 fields: dict[str, Any]) -> None:
    """Settle (the whole reservation if the response did not finish) and audit it."""
    record = exchange.abort()  # the record of ``finish`` if the response completed
    agent.ctx.audit.send("llm.usage", host=fields["host"], rule=decision.origin,
                         path=fields["path"], **record.event())
