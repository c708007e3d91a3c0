"""Synthetic addresses the DNS stub hands out, and the way back from address to name.

Invariants:
- Addresses come from 198.18.0.0/15 and a ULA /64 that corral owns inside the sandbox; no
  real destination is ever dialled at one of them (they are in the private deny list).
- A name keeps its addresses for the life of the sandbox; the table is bounded.
"""

from __future__ import annotations

import ipaddress

__all__ = ["V4_POOL", "V6_POOL", "SyntheticNames"]

V4_POOL = ipaddress.IPv4Network("198.18.0.0/15")
V6_POOL = ipaddress.IPv6Network("fd63:6f72:7261:6c00::/64")
MAX_NAMES = 100_000


class SyntheticNames:
    def __init__(self) -> None:
        self._by_name: dict[str, tuple[str, str]] = {}
        self._by_addr: dict[str, str] = {}

    def addresses(self, name: str) -> tuple[str, str]:
        """(IPv4, IPv6) for ``name``, allocating on first use."""
        known = self._by_name.get(name)
        if known is not None:
            return known
        index = len(self._by_name) + 1
        if index >= MAX_NAMES:
            raise OverflowError("synthetic address table full")
        v4 = str(V4_POOL.network_address + index)
        v6 = str(V6_POOL.network_address + index)
        self._by_name[name] = (v4, v6)
        self._by_addr[v4] = name
        self._by_addr[v6] = name
        return v4, v6

    def name_for(self, address: str) -> str | None:
        try:
            canonical = str(ipaddress.ip_address(address))
        except ValueError:
            return None
        return self._by_addr.get(canonical)

    def is_synthetic(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return ip in V4_POOL if ip.version == 4 else ip in V6_POOL
