"""The response path: from an upstream back to the agent, for both upstream parsers.

Invariants:
- An allowed exchange is audited (``proxy.allow`` or ``proxy.inspect``: status, declared
  length, time to the head) before the agent sees a byte of the response, except when the
  request carried an injected credential: its ``credential.inject`` record was durable before
  the request left, so this one is written without waiting (``RelayAudit.send``; committed in
  order before any later event, and a refusal fails the proxy closed from then on). Every
  request so waits for exactly one relay round trip.
- The response is rebuilt from events by ``agent_writer`` (status, headers without hop-by-hop,
  body data re-framed), never copied raw. Header names llhttp parsed are tokens (its check);
  values and reason are checked here for control bytes on both paths (h11 lets some through).
  Anything either parser refuses is an upstream error (502).
- Interim responses: 100 is never relayed (the proxy answered Expect itself); others are
  relayed on the h11 path and dropped on the llhttp path (it never sends Expect).
- A 101 is relayed only as the answer to a checked WebSocket handshake that it completes
  (``upgrade.check_switch``: Upgrade, Connection, Sec-WebSocket-Accept); the connection then
  becomes a byte pipe (audited first, with the protocol) and leaves the pool for good. Any
  other 101 (unasked, another protocol, a wrong accept) is a 502 and the connection ends.
- An upstream connection goes back to its pool only after a complete exchange its parser says
  may be reused; otherwise it is closed and forgotten.
- A response body streams to the agent as it arrives (drained before every upstream read).
  A metered request's ``Exchange`` (``corral.spend``) sees the head and every body chunk as
  it passes (it never holds the body) and is finished at the end of the response.
- A response to a request that carried an injected credential goes through its
  ``ResponseScrub`` (heads, body, end); others are relayed as they are, at no extra cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import h11

from corral.policy.types import Decision
from corral.proxy.agent import AgentConnection
from corral.proxy.headers import any_control_bytes, forward_headers
from corral.proxy.response_scrub import ResponseScrub
from corral.proxy.tunnel import pipe
from corral.proxy.upgrade import Offer, check_switch
from corral.proxy.upstream import UpstreamError
from corral.proxy.upstream_h11 import H11Upstream
from corral.proxy.upstream_http import FastUpstream
from corral.proxy.upstream_pool import Pooled, UpstreamPool, Upstreams
from corral.spend import Exchange

__all__ = ["allow_kind", "relay_fast_response", "relay_response"]

U = TypeVar("U", bound=Pooled)
UNASKED_101 = "upstream switched protocols though the agent did not ask to (101 refused)"


def allow_kind(decision: Decision) -> str:
    """The audit event type of an exchange the policy let through."""
    return "proxy.inspect" if decision.action == "inspect" else "proxy.allow"


async def _audit_head(
    agent: AgentConnection,
    decision: Decision,
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    started: float,
    fields: dict[str, Any],
    recorded: bool = False,
) -> None:
    """``recorded``: the request already has a durable record (its ``credential.inject``)."""
    length = None
    for name, value in headers:
        if name == b"content-length":
            length = value
            break
    event = {
        "rule": decision.origin,
        "status": status,
        "bytes_in": int(length) if length is not None and length.isdigit() else None,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
        **fields,
    }
    if recorded:
        agent.ctx.audit.send(allow_kind(decision), **event)
    else:
        await agent.ctx.audit.emit(allow_kind(decision), **event)


async def _end(
    agent: AgentConnection, pool: UpstreamPool[U], up: U, reusable: Callable[[], bool]
) -> bool:
    """Finish the response to the agent; ``up`` stays pooled only if ``reusable()`` says so."""
    agent.response.end()
    await agent.client.drain()
    if not reusable():
        up.stream.close()
        pool.forget(up)
    return True


async def _fast_head(agent: AgentConnection, item: tuple[Any, ...], decision: Decision,
                     fields: dict[str, Any], started: float, scrub: ResponseScrub | None,
                     spend: Exchange | None) -> None:
    """A response head llhttp parsed, to the agent: audited, checked, metered, scrubbed."""
    status = item[1]
    if status < 200:
        if status == 101:  # no upgrade was asked for on this path
            raise UpstreamError(502, UNASKED_101)
        return  # interim responses (no Expect on this path): nothing to relay
    headers = forward_headers(item[2], False)
    if any(n == b"transfer-encoding" for n, _ in headers):
        headers = [(n, v) for n, v in headers if n != b"content-length"]
    await _audit_head(agent, decision, status, headers, started, fields, scrub is not None)
    # llhttp validated names (tokens); values and the reason are checked for control bytes
    # here (h11's rule: none but tab).
    reason = item[3]
    if any_control_bytes(headers, reason):
        raise UpstreamError(502, "upstream sent control bytes in a header")
    if spend is not None:
        spend.response(status, headers)
    if scrub is not None:
        headers, reason = await scrub.head(agent, headers, reason)
    agent.response.head(status, headers, reason)


async def relay_fast_response(
    agent: AgentConnection,
    upstreams: Upstreams,
    up: FastUpstream,
    decision: Decision,
    fields: dict[str, Any],
    started: float,
    scrub: ResponseScrub | None = None,
    spend: Exchange | None = None,
) -> bool:
    """Relay a response llhttp parses; True (the agent connection may go on)."""
    while True:
        item = await up.next_event(agent.ctx.idle_timeout, agent.client)
        if item[0] == "head":
            await _fast_head(agent, item, decision, fields, started, scrub, spend)
        elif item[0] == "data":
            if spend is not None:
                spend.feed(item[1])
            if scrub is None:
                agent.response.data(item[1])
            else:
                await scrub.data(agent, item[1])
        else:
            if spend is not None:
                spend.finish()
            if scrub is not None:
                await scrub.end(agent)
            return await _end(agent, upstreams.fast, up, up.reusable)


async def relay_response(
    agent: AgentConnection,
    upstreams: Upstreams,
    up: H11Upstream,
    decision: Decision,
    fields: dict[str, Any],
    started: float,
    upgrade: Offer | None,
    scrub: ResponseScrub | None = None,
) -> bool:
    """Relay a response h11 parses; True if the agent connection may carry another request."""
    status = 0
    while True:
        try:
            event = await up.next_event(agent.ctx.idle_timeout, agent.client)
        except h11.RemoteProtocolError as err:
            raise UpstreamError(502, f"upstream sent an invalid response: {err}") from None
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                return await _switch(agent, upstreams, up,
                                     await _checked_101(agent, event, upgrade, scrub),
                                     decision, fields)
            await _interim(agent, event, scrub)
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            await _h11_head(agent, event, decision, fields, started, scrub)
        elif isinstance(event, h11.Data):
            if scrub is None:
                agent.response.data(bytes(event.data))
            else:
                await scrub.data(agent, bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            if scrub is not None:
                await scrub.end(agent)
            return await _end(agent, upstreams.h11, up, up.recycle)
        elif isinstance(event, h11.ConnectionClosed):
            if status == 0:
                raise UpstreamError(502, "upstream closed the connection without answering")
            return False


async def _h11_head(agent: AgentConnection, event: h11.Response, decision: Decision,
                    fields: dict[str, Any], started: float, scrub: ResponseScrub | None) -> None:
    """A response head h11 parsed, to the agent: audited, checked, scrubbed."""
    await _audit_head(agent, decision, event.status_code, event.headers, started, fields,
                      scrub is not None)
    # Parsed by h11 from the upstream; hop-by-hop removed. h11 lets control bytes other than
    # NUL, CR and LF through in values and the reason: refused as on llhttp.
    headers, reason = forward_headers(event.headers, False), event.reason
    if any_control_bytes(headers, reason):
        raise UpstreamError(502, "upstream sent control bytes in a header")
    if scrub is not None:
        headers, reason = await scrub.head(agent, headers, reason)
    agent.response.head(event.status_code, headers, reason)


async def _checked_101(agent: AgentConnection, event: h11.InformationalResponse,
                       upgrade: Offer | None, scrub: ResponseScrub | None
                       ) -> h11.InformationalResponse:
    """The 101 to relay: only the answer to the checked handshake the agent offered."""
    if upgrade is None:
        raise UpstreamError(502, UNASKED_101)
    why = check_switch(upgrade, event.headers)
    if why is not None:
        raise UpstreamError(502, f"upgrade refused: {why}")
    if scrub is None:
        return event
    # the 101's head is scrubbed; the tunnelled stream is not
    headers = await scrub.interim(agent, event.headers)
    return h11.InformationalResponse(status_code=101, headers=headers, reason=event.reason)


async def _interim(agent: AgentConnection, event: h11.InformationalResponse,
                   scrub: ResponseScrub | None) -> None:
    """An interim answer other than 101, relayed (checked, scrubbed); never a 100 (the proxy
    answered Expect itself)."""
    if event.status_code == 100:
        return
    interim = forward_headers(event.headers, False)
    if any_control_bytes(interim, event.reason):
        raise UpstreamError(502, "upstream sent control bytes in a header")
    if scrub is not None:
        interim = await scrub.interim(agent, interim)
    agent.response.informational(event.status_code, interim)


async def _switch(
    agent: AgentConnection,
    upstreams: Upstreams,
    up: H11Upstream,
    event: h11.InformationalResponse,
    decision: Decision,
    fields: dict[str, Any],
) -> bool:
    """Hand the agent a 101 and pipe bytes both ways until either side ends."""
    await agent.ctx.audit.emit(
        allow_kind(decision), rule=decision.origin, status=101, reason="protocol upgrade", **fields
    )
    hop = (b"keep-alive", b"proxy-connection")
    headers = [(n, v) for n, v in event.headers if n not in hop]
    agent.response.informational(101, headers)
    await agent.client.drain()
    client_rest = agent.reader.trailing_data
    upstream_rest = bytes(up.conn.trailing_data[0])
    upstreams.h11.forget(up)
    if client_rest:
        up.stream.write(client_rest)
    if upstream_rest:
        agent.client.write(upstream_rest)
    await up.stream.drain()
    await agent.client.drain()
    await pipe(agent.client, up.stream)
    up.stream.close()
    return False
