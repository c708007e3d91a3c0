"""Upstream connections an agent connection keeps open, one per destination and parser.

Invariants:
- Every upstream connection is dialled here, to the address ``resolve`` chose for the
  *decided* rule (destination checks apply on every dial, never skipped for reuse), with TLS
  verified for the policy host name against the rule's ``tls_ca`` (or the system store).
- A pooled connection is handed out again only while it is idle; a busy or spent one is
  closed and replaced, never shared by two requests.
- Connections belong to one agent connection and are all closed when it ends (``close``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from corral.policy.types import Decision
from corral.proxy.context import ProxyContext
from corral.proxy.streams import Stream
from corral.proxy.upstream import dial
from corral.proxy.upstream_h11 import H11Upstream
from corral.proxy.upstream_http import FastUpstream

__all__ = ["Pooled", "UpstreamPool", "Upstreams", "dial_upstream"]


class Pooled(Protocol):
    """What a pool needs of an upstream connection."""

    @property
    def stream(self) -> Stream: ...

    @property
    def idle(self) -> bool: ...


U = TypeVar("U", bound=Pooled)


async def dial_upstream(
    ctx: ProxyContext, host: str, port: int, tls: bool, decision: Decision
) -> Stream:
    """A fresh connection to ``host:port`` at the checked address (raises ``Refused``)."""
    rule = decision.rule
    address = await ctx.resolver.choose(host, port, rule)
    context = ctx.upstream_tls.get(rule.tls_ca if rule else None) if tls else None
    return await dial(address, host, port, tls=context, proxy=ctx.upstream_proxy)


class UpstreamPool(Generic[U]):
    def __init__(self, ctx: ProxyContext, make: Callable[[Stream], U]) -> None:
        self._ctx = ctx
        self._make = make
        self._open: dict[tuple[str, int, bool], U] = {}

    async def get(self, host: str, port: int, tls: bool, decision: Decision) -> U:
        key = (host, port, tls)
        up = self._open.get(key)
        if up is not None and up.idle:
            return up
        if up is not None:
            up.stream.close()
            del self._open[key]
        up = self._make(await dial_upstream(self._ctx, host, port, tls, decision))
        self._open[key] = up
        return up

    def forget(self, up: U) -> None:
        """Stop pooling ``up`` (the caller closes or takes over its stream)."""
        for key, value in list(self._open.items()):
            if value is up:
                del self._open[key]

    def close(self) -> None:
        for up in self._open.values():
            up.stream.close()
        self._open.clear()


class Upstreams:
    """Both pools of one agent connection: llhttp for ordinary exchanges, h11 for the rest."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.fast: UpstreamPool[FastUpstream] = UpstreamPool(ctx, FastUpstream)
        self.h11: UpstreamPool[H11Upstream] = UpstreamPool(ctx, H11Upstream)

    def close(self) -> None:
        self.h11.close()
        self.fast.close()
