"""Which resolved addresses the proxy may dial.

Invariants:
- The deny list is explicit CIDRs, not ``ipaddress.is_private``: that property also covers the
  documentation ranges, and real registries resolve to documentation-range addresses.
- IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 well-known prefix,
  6to4) are judged by the embedded IPv4 address as well as by their own range.
- A private address is allowed only when the rule's host is that very IP literal or the rule
  says ``allow_private: true``.
"""

from __future__ import annotations

import ipaddress

__all__ = ["PRIVATE_V4", "PRIVATE_V6", "blocked_reason", "embedded_v4"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(c)
    for c in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments (incl. 192.0.0.192 metadata on some clouds)
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking; also corral's synthetic DNS pool
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved
        "255.255.255.255/32",  # broadcast
    )
)
PRIVATE_V6 = tuple(
    ipaddress.IPv6Network(c)
    for c in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "fc00::/7",  # ULA
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
        "fd00:ec2::254/128",  # AWS metadata (inside ULA, listed for clarity)
    )
)


def embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    packed = int(addr)
    if packed >> 32 == 0 and packed > 1:  # IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if packed >> 32 == 0x0064FF9B0000000000000000:  # NAT64 64:ff9b::/96
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if (packed >> 80) == 0x0064FF9B0001:  # local-use NAT64 64:ff9b:1::/48
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return None


def blocked_reason(addr: IPAddress) -> str | None:
    """Why ``addr`` is a private destination, or None when it is public."""
    if isinstance(addr, ipaddress.IPv4Address):
        for net in PRIVATE_V4:
            if addr in net:
                return f"{addr} is in the private range {net}"
        return None
    for net6 in PRIVATE_V6:
        if addr in net6:
            return f"{addr} is in the private range {net6}"
    inner = embedded_v4(addr)
    if inner is not None:
        why = blocked_reason(inner)
        if why is not None:
            return f"{addr} embeds {inner}: {why}"
    return None
