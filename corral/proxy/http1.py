"""HTTP/1.1 on the agent's side of the proxy: parse, decide, forward, stream back.

One ``Session`` serves one client connection: the explicit proxy (absolute-form requests and
CONNECT), the inside of an intercepted TLS connection, or a transparently captured plain-HTTP
connection (the latter two are ``pinned`` to one host and port). This module is the request
loop; the parts live beside it:

- ``request_head``: head size, obs-fold, framing, target and Host checks (400 / 403);
- ``agent``: the connection to the agent (``agent_parser`` reads requests, ``agent_writer``
  frames responses), local answers, idle watchdog;
- ``forward``: headers, credential injection, request body towards the upstream;
- ``respond``: the response back to the agent, protocol upgrades, connection reuse;
- ``upstream_pool``, ``upstream_h11``, ``upstream_http``: the upstream connections.

Invariants:
- Every request is decided in full (host, port, method, path) before anything is sent upstream,
  under its own method and every method an override header names (``override``); an upgrade
  request goes on only as a checked WebSocket handshake (``upgrade``);
  a deny is audited before the 403 is written, an allowed request before the response head is
  relayed (status and declared length; the body then streams). Any exception in deciding denies.
- Requests the agent parser rejects (everything h11 rejected, and the smuggling shapes h11
  tolerated: both Content-Length and Transfer-Encoding, obs-fold header lines), and
  dot-segments in the path, get 400 and the connection is closed. Bodies are re-framed on the
  way out, never copied raw.
- In a pinned session the Host header must name the pinned host (Host = SNI = CONNECT target).
- Bodies stream in both directions chunk by chunk; nothing is buffered whole except an AWS
  body whose hash must be computed (bounded).
- Credentials are injected only through ``inject.plan``.
- A connection carries another request only after a complete exchange on both sides; any
  failure answers (if a response has not started) and closes it.
"""

from __future__ import annotations

import time
from typing import Any

from corral.policy.types import Decision
from corral.proxy import decide, deny, inject, override, sigv4, upgrade
from corral.proxy.agent import AgentConnection
from corral.proxy.agent_parser import Request
from corral.proxy.context import ProxyContext
from corral.proxy.forward import forward
from corral.proxy.lookup import Refused
from corral.proxy.request_head import (
    BadRequest,
    HostMismatch,
    Pinned,
    Target,
    check_framing,
    normalise_host,
    request_target,
)
from corral.proxy.respond import allow_kind
from corral.proxy.streams import Stream
from corral.proxy.upstream import UpstreamError
from corral.proxy.upstream_pool import Upstreams

__all__ = ["BadRequest", "Pinned", "Session", "normalise_host"]


class Session(AgentConnection):
    def __init__(self, ctx: ProxyContext, client: Stream, pinned: Pinned | None = None) -> None:
        super().__init__(ctx, client, pinned)
        self.upstreams = Upstreams(ctx)
        self._host_ok: set[bytes] = set()

    async def run(self) -> None:
        self.start_watchdog()
        try:
            while True:
                try:
                    req = await self.next_request()
                except BadRequest as err:
                    await self.bad_request(err)
                    return
                if req is None:
                    return  # the agent closed the connection
                if not await self._request(req):
                    return
                if not self.reusable:
                    return
                self.start_next_cycle()
        finally:
            self.stop_watchdog()
            self.upstreams.close()

    async def _request(self, req: Request) -> bool:
        """Decide and carry one request; True if the connection may carry another."""
        started = time.monotonic()
        method = req.method.decode("ascii")
        if method == "CONNECT":
            return await self._connect(req)
        target = await self._target(req, method)
        if target is None:
            return False
        host, port, path = target.host, target.port, target.path
        fields: dict[str, Any] = {"method": method, "host": host, "port": port, "path": path}
        decision = decide.request(self.ctx.policy, host, port, method, path)
        offer = None
        if decision.action != "deny":
            # The slow checks run only for a request that may ask to upgrade or carry a method
            # override: three substring searches in C over the joined names (~2x cheaper than
            # a Python loop over them); a false hit only costs the exact checks.
            names = b"\n".join([n for n, _ in req.headers])
            if b"method" in names or b"upgrade" in names or b"http2-settings" in names:
                checked = await self._overrides(req, target, decision, fields)
                if checked is None:
                    return False
                decision, offer = checked
        if decision.action == "deny":
            await self.deny(decision, f"{method} {target.authority}{path}", fields)
            return False
        return await self._carry(req, decision, target, fields, started, offer)

    async def _connect(self, req: Request) -> bool:
        if self.pinned is not None:
            await self.bad_request(BadRequest("CONNECT inside a tunnel"))
            return False
        from corral.proxy.connect import handle_connect

        await handle_connect(self.ctx, self, req)
        return False

    async def _target(self, req: Request, method: str) -> Target | None:
        """The request's target, or None once the agent has had the refusal."""
        try:
            check_framing(req, req.headers)
            return request_target(req, self.pinned, self._host_ok, req.headers)
        except BadRequest as err:
            await self.bad_request(err)
        except UnicodeError:
            await self.bad_request(BadRequest("non-ASCII request target"))
        except HostMismatch as err:
            refusal = Decision("deny", None, str(err))
            host = self.pinned.host if self.pinned else "-"
            await self.deny(refusal, f"{method} request", {"method": method, "host": host})
        return None

    async def _overrides(self, req: Request, target: Target, decision: Decision,
                         fields: dict[str, Any]) -> tuple[Decision, upgrade.Offer | None] | None:
        """The decision once method overrides and an upgrade offer are judged; None once the
        agent has had a 400."""
        method, headers, offer = fields["method"], req.headers, None
        try:
            decision = override.decide_overrides(
                self.ctx.policy, target.host, target.port, method, target.path, headers,
                decision)
            if decision.action != "deny" and upgrade.asks_upgrade(headers):
                offer = upgrade.offer(req.method, req.http_version, headers)
                fields["protocol"] = "websocket"
        except BadRequest as err:
            await self.bad_request(err)
            return None
        except upgrade.Refused as err:
            fields["protocol"] = err.protocol
            decision = deny.refusal(decision, err.reason)
        return decision, offer

    async def _carry(self, req: Request, decision: Decision, target: Target,
                     fields: dict[str, Any], started: float, offer: upgrade.Offer | None) -> bool:
        """Forward an allowed request (or hand it to the platform relay) and relay the answer."""
        try:
            if decision.action == "platform":
                from corral.proxy.platform import relay  # loaded when the policy has one

                return await relay(self, req, decision, target, fields, started)
            return await forward(
                self, self.upstreams, req, decision, target, fields, started, offer
            )
        except (Refused, sigv4.SigV4Error, inject.InjectionError) as err:
            await self.deny(deny.refusal(decision, str(err)),
                            f"{fields['method']} {target.host}", fields)
            return False
        except UpstreamError as err:
            await self.ctx.audit.emit(
                allow_kind(decision),
                rule=decision.origin,
                status=err.status,
                reason=err.reason,
                **fields,
            )
            if self.can_respond:
                await self.simple(err.status, f"corral: upstream failure: {err.reason}\n")
            return False
        except BadRequest as err:
            if self.can_respond:
                await self.bad_request(err)
            return False
