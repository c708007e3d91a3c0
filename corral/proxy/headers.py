"""Header lists as they cross the proxy, in either direction.

Invariants:
- Hop-by-hop headers (RFC 9110 §7.6.1, plus the proxy's own Proxy-*) and every header the
  Connection header names are dropped, except Upgrade and Connection on a request that asks to
  upgrade and names it in Connection.
- Content-Length, Transfer-Encoding and Host are never dropped here, even if Connection names
  them: framing is re-done by h11 (or checked by the caller), and Host is rebuilt by the caller.
- ``has_control_bytes`` is the check that lets a caller skip h11's own validation of values
  another parser (llhttp) already split into names and values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["HOP_BY_HOP", "forward_headers", "has_control_bytes"]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def forward_headers(
    headers: Sequence[tuple[bytes, bytes]], upgrade: bool
) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers (and any the Connection header names); keep framing for h11."""
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named |= {t.strip().lower() for t in value.split(b",")}
    named -= {b"content-length", b"transfer-encoding", b"host"}  # framing is never hop-by-hop
    keep_upgrade = upgrade and b"upgrade" in named
    out = []
    for name, value in headers:
        if keep_upgrade and name in (b"upgrade", b"connection"):
            out.append((name, value))
            continue
        if name in HOP_BY_HOP or name in named:
            continue
        out.append((name, value))
    return out


def has_control_bytes(value: bytes) -> bool:
    """True if ``value`` holds a control byte other than tab (CR, LF and NUL included)."""
    return _CONTROL.search(value) is not None
