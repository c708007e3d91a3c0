"""Resolve a destination once and choose the address to dial.

Invariants:
- The proxy dials exactly the address checked here (no second lookup: no DNS rebinding).
- An address in the private lists of ``destinations`` is refused unless the rule's host is that
  IP literal or the rule allows private addresses.
- ``overrides`` (name -> addresses) replace DNS for listed names, like curl's ``--resolve``;
  they go through the same checks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping, Sequence

from corral.policy.types import Rule
from corral.proxy.destinations import blocked_reason

__all__ = ["Refused", "Resolver", "is_ip"]


class Refused(Exception):
    """The destination may not be dialled; ``str()`` explains why."""


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Resolver:
    def __init__(self, overrides: Mapping[str, Sequence[str]] | None = None) -> None:
        self.overrides = {k.lower(): list(v) for k, v in (overrides or {}).items()}

    async def lookup(self, host: str, port: int) -> list[str]:
        if is_ip(host):
            return [host]
        if host in self.overrides:
            return self.overrides[host]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise Refused(f"{host} does not resolve ({err.strerror})") from None
        seen: list[str] = []
        for info in infos:
            addr = str(info[4][0])
            if addr not in seen:
                seen.append(addr)
        return seen

    async def choose(self, host: str, port: int, rule: Rule | None) -> str:
        reasons = []
        for addr in await self.lookup(host, port):
            ip = ipaddress.ip_address(addr)
            why = blocked_reason(ip)
            if why is None:
                return addr
            if rule is not None and (rule.allow_private or _literal_match(rule.host, ip)):
                return addr
            reasons.append(why)
        if not reasons:
            raise Refused(f"{host} has no addresses")
        origin = str(rule.origin) if rule is not None else "default deny"
        raise Refused(
            f"{host} resolves only to private addresses ({'; '.join(reasons)}). "
            f"To allow it, set `allow_private: true` on the rule at {origin} "
            "or name the IP literal as the rule's host."
        )


def _literal_match(rule_host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(rule_host.strip("[]")) == ip
    except ValueError:
        return False
