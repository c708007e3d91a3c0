"""Header lists as they cross the proxy, in either direction.

Invariants:
- Hop-by-hop headers (RFC 9110 §7.6.1, plus the proxy's own Proxy-*) and every header the
  Connection header names are dropped, except Upgrade and Connection on a request that asks to
  upgrade and names it in Connection.
- Content-Length, Transfer-Encoding and Host are never dropped here, even if Connection names
  them: framing is re-done on the way out (or checked by the caller), and Host is rebuilt by
  the caller.
- ``has_control_bytes`` is the check that lets a caller skip h11's own validation of values
  another parser (llhttp) already split into names and values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "HOP_BY_HOP",
    "any_control_bytes",
    "forward_headers",
    "has_control_bytes",
    "request_headers",
]

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
    """Drop hop-by-hop headers (and any the Connection header names); keep framing headers."""
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


def request_headers(
    headers: Sequence[tuple[bytes, bytes]], host: bytes
) -> tuple[list[tuple[bytes, bytes]], bool, bool]:
    """A request's headers as ``forward_headers`` keeps them, any Host replaced by ``host``
    (first); plus whether the agent asked to upgrade and whether it sent Expect. One pass over
    the agent's headers when Connection is absent (the usual case)."""
    upgrade = expect = False
    named: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            if named is None:
                named = set()
            named |= {t.strip().lower() for t in value.split(b",")}
        elif name == b"upgrade":
            upgrade = True
        elif name == b"expect":
            expect = True
    if named is not None or upgrade:
        kept = forward_headers(headers, upgrade)
        out = [(b"host", host)]
        out += [(n, v) for n, v in kept if n != b"host"]
        return out, upgrade, expect
    # No Connection header: only the fixed hop-by-hop set (and Host) goes.
    out = [(b"host", host)]
    out += [(n, v) for n, v in headers if n not in HOP_BY_HOP and n != b"host"]
    return out, upgrade, expect


def has_control_bytes(value: bytes) -> bool:
    """True if ``value`` holds a control byte other than tab (CR, LF and NUL included)."""
    return _CONTROL.search(value) is not None


def any_control_bytes(headers: Sequence[tuple[bytes, bytes]], reason: bytes) -> bool:
    """``has_control_bytes`` over every header value and ``reason`` in one regex pass (joined
    by tab, the one control byte allowed, so a hit is always inside one of them)."""
    values = [v for _, v in headers]
    values.append(reason)
    return _CONTROL.search(b"\t".join(values)) is not None
