"""Sending an allowed request upstream: headers rebuilt, credential injected, body streamed.

Invariants:
- Only requests the policy already allowed in full (host, port, method, path) come here.
- The headers sent are the agent's minus hop-by-hop, with Host rebuilt from the decided target
  (first), and a credential only as ``inject.plan`` allows it, put in by ``inject.apply``
  (header or AWS signature; audited as ``credential.inject`` before the request leaves).
- An upgrade request arrives here only as a WebSocket handshake ``http1`` checked
  (``upgrade.offer``); its 101 is checked against it in ``respond``.
- Ordinary exchanges go to an llhttp upstream (``upstream_http``); HEAD, Upgrade, Expect and
  re-signed AWS requests go to an h11 upstream, which validates re-signed headers in full.
- Bodies stream chunk by chunk, re-framed by the upstream writer, never copied raw.
- A request with an injected credential asks for an unencoded response (before any signing)
  and its response is scrubbed of the secret (``response_scrub``); no other response is.
- A request under a rule with ``meter:`` is admitted by ``metered`` (body read whole,
  estimated and reserved, or answered there) before any credential is injected, takes the
  llhttp path, and its response is metered as it streams and settled when it ends.
"""

from __future__ import annotations

from typing import Any

import h11

from corral.policy.types import Decision
from corral.proxy import decide, inject, scrub
from corral.proxy.agent import AgentConnection
from corral.proxy.agent_parser import Request
from corral.proxy.headers import request_headers
from corral.proxy.lookup import Refused
from corral.proxy.request_head import BadRequest, Target
from corral.proxy.respond import relay_fast_response, relay_response
from corral.proxy.response_scrub import ResponseScrub, identity
from corral.proxy.upgrade import Offer
from corral.proxy.upstream import UpstreamError
from corral.proxy.upstream_pool import Upstreams

__all__ = ["forward"]


async def forward(
    agent: AgentConnection,
    upstreams: Upstreams,
    req: Request,
    decision: Decision,
    target: Target,
    fields: dict[str, Any],
    started: float,
    offer: Offer | None = None,
) -> bool:
    """Carry an allowed request and its response; True if the agent connection may go on.
    ``offer`` is the WebSocket handshake ``http1`` checked, if the request asks to upgrade."""
    ctx = agent.ctx
    method = fields["method"]
    host, port, tls, origin = target
    headers, asks_upgrade, expect = request_headers(req.headers, target.authority.encode())
    if ctx.spend is not None and decision.rule is not None and decision.rule.meter:
        return await _metered(agent, upstreams, req, decision, target, fields, started,
                              headers, asks_upgrade)
    # A 101 is accepted only against the handshake http1 checked (fail closed without one).
    upgrade = offer if asks_upgrade else None
    binding = decide.binding_for(ctx.policy, decision) if decision.credential else None
    plan = inject.plan(decision, binding, ctx.secrets, method=method, tls=tls)
    buffered: list[bytes] | None = None
    scrubber = None
    if plan is not None:
        scrubber = ResponseScrub(scrub.scrubber_for(plan.binding, plan.secret), host)
        headers, buffered = await inject.apply(
            agent, plan, decision, target, origin, method, identity(headers)
        )
    if agent.waiting_for_100_continue:
        agent.response.informational(100, [])
        await agent.client.drain()  # the agent waits for it before sending its body
    if (
        req.method not in (b"HEAD", b"CONNECT")
        and not asks_upgrade
        and (plan is None or plan.binding.kind == "header")
        and not (expect if plan is None else any(n == b"expect" for n, _ in headers))
    ):
        # An ordinary exchange: request re-framed by hand, response parsed by llhttp.
        fast = await upstreams.fast.get(host, port, tls, decision)
        fast.start(req.method, origin.encode(), headers)
        await agent.relay_body(fast)
        await fast.stream.drain()
        return await relay_fast_response(
            agent, upstreams, fast, decision, fields, started, scrubber
        )
    up = await upstreams.h11.get(host, port, tls, decision)
    try:
        # Headers the agent parser validated (plus Host and an injected header, both checked)
        # skip h11's second validation pass; re-signed AWS headers are validated in full.
        trusted = plan is None or plan.binding.kind == "header"
        up.send(
            h11.Request(method=req.method, target=origin.encode(), headers=headers, _parsed=trusted)
        )
    except h11.LocalProtocolError as err:
        raise BadRequest(str(err)) from None
    if buffered is not None:  # the AWS body read for its hash, replayed
        for chunk in buffered:
            up.body(chunk)
        up.end()
    else:
        await agent.relay_body(up)
    await up.stream.drain()
    return await relay_response(
        agent, upstreams, up, decision, fields, started, upgrade, scrubber
    )


async def _metered(
    agent: AgentConnection,
    upstreams: Upstreams,
    req: Request,
    decision: Decision,
    target: Target,
    fields: dict[str, Any],
    started: float,
    headers: list[tuple[bytes, bytes]],
    asks_upgrade: bool,
) -> bool:
    from corral.proxy.metered import admit, settle  # imported before the privilege drop

    host, port, tls, origin = target
    if asks_upgrade or req.method not in (b"POST", b"GET"):
        raise Refused("a metered API takes plain GET and POST requests only")
    binding = decide.binding_for(agent.ctx.policy, decision) if decision.credential else None
    plan = inject.plan(decision, binding, agent.ctx.secrets, method=fields["method"], tls=tls)
    if plan is not None and plan.binding.kind != "header":
        raise Refused("a metered rule injects header credentials only")
    admitted = await admit(agent, agent.ctx.spend, decision, fields, headers)
    if isinstance(admitted, bool):
        return admitted
    exchange, headers, body = admitted
    scrubber = None
    try:
        if plan is not None:
            scrubber = ResponseScrub(scrub.scrubber_for(plan.binding, plan.secret), host)
            headers, _ = await inject.apply(
                agent, plan, decision, target, origin, fields["method"], headers
            )
        try:
            fast = await upstreams.fast.get(host, port, tls, decision)
        except UpstreamError:
            if exchange is not None:
                exchange.release()  # nothing reached the provider: nothing to charge
            raise
        fast.start(req.method, origin.encode(), headers)
        fast.body(body)
        fast.end()
        await fast.stream.drain()
        return await relay_fast_response(
            agent, upstreams, fast, decision, fields, started, scrubber, exchange
        )
    finally:
        if exchange is not None:
            await settle(agent, exchange, decision, fields)
