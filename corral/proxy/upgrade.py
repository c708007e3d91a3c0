"""Protocol upgrades: only a checked WebSocket handshake ever turns a connection into a tunnel.

After a ``101 Switching Protocols`` the proxy pipes bytes without parsing them, so whatever the
upstream does next escapes the per-request policy and audit. An upstream that "upgrades" to
h2c (or anything else) and keeps speaking HTTP would serve every later request on that
connection undecided (the h2c-smuggling class). So:

Invariants:
- A request that asks to upgrade (an ``Upgrade`` header, an ``HTTP2-Settings`` header, or
  ``HTTP2-Settings`` named in ``Connection``) goes upstream only as a proper RFC 6455 client
  handshake: GET over HTTP/1.1, exactly one ``Upgrade`` header reading ``websocket`` (any
  case) and nothing else, ``upgrade`` among the ``Connection`` tokens, nothing about
  HTTP2-Settings, and exactly one ``Sec-WebSocket-Key`` that is 16 bytes in base64. Anything
  else is refused (``Refused``, a 403 naming the rule and the protocol) before a byte leaves.
- A 101 becomes a tunnel only if it answers such a handshake, says ``Upgrade: websocket``
  (one header, one token), names ``upgrade`` in ``Connection`` and carries exactly one
  ``Sec-WebSocket-Accept`` equal to base64(SHA-1(key + GUID)) of the agent's key. Otherwise
  (``check_switch`` returns why) the connection ends with a 502, audited. A 101 to a request
  that asked for nothing is refused by the response path before this module is consulted.
- Nothing here runs for a request that does not ask to upgrade: ``asks_upgrade`` is the one
  check on the hot path, and the request loop calls it only for a flagged header name.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["GUID", "Offer", "Refused", "accept_for", "asks_upgrade", "check_switch", "offer"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
Headers = Sequence[tuple[bytes, bytes]]


class Refused(Exception):
    """An upgrade request corral does not let through (answered 403, audited)."""

    def __init__(self, reason: str, protocol: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.protocol = protocol


class Offer(NamedTuple):
    """A checked WebSocket handshake: the accept value the upstream's 101 must carry."""

    accept: bytes


def accept_for(key: bytes) -> bytes:
    """RFC 6455 §4.2.2: base64(SHA-1(key + GUID))."""
    import hashlib  # only on an upgrade: hashlib is not on the proxy's import path otherwise

    return base64.b64encode(hashlib.sha1(key + GUID, usedforsecurity=False).digest())


def _values(headers: Headers, name: bytes) -> list[bytes]:
    return [v.strip(b" \t") for n, v in headers if n == name]


def _tokens(headers: Headers, name: bytes) -> list[bytes]:
    return [t.strip(b" \t").lower() for v in _values(headers, name) for t in v.split(b",")]


def asks_upgrade(headers: Headers) -> bool:
    """The request asks to switch protocols (or carries h2c's settings)."""
    return any(n == b"upgrade" or n == b"http2-settings" for n, _ in headers)


def _protocol(upgrades: list[bytes]) -> str:
    text = ", ".join(v.decode("latin-1") for v in upgrades) or "h2c"
    return text[:100]


def offer(method: bytes, http_version: bytes, headers: Headers) -> Offer:
    """The handshake's expected accept value; ``Refused`` unless it is a proper WebSocket one."""
    upgrades = _values(headers, b"upgrade")
    connection = _tokens(headers, b"connection")
    protocol = _protocol(upgrades)
    settings = b"http2-settings" in connection or any(n == b"http2-settings" for n, _ in headers)
    if settings or len(upgrades) != 1 or upgrades[0].lower() != b"websocket":
        raise Refused(
            f"corral lets only 'Upgrade: websocket' through, checked; {protocol!r} "
            "(or HTTP2-Settings) is refused, since after a switch the connection would carry "
            "requests the policy never sees",
            protocol,
        )
    if method != b"GET" or http_version != b"1.1":
        raise Refused("a WebSocket handshake must be a GET over HTTP/1.1", "websocket")
    if b"upgrade" not in connection:
        raise Refused("a WebSocket handshake must name Upgrade in Connection", "websocket")
    keys = _values(headers, b"sec-websocket-key")
    try:
        valid = len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise Refused(
            "a WebSocket handshake needs exactly one Sec-WebSocket-Key of 16 base64 bytes",
            "websocket",
        )
    return Offer(accept_for(keys[0]))


def check_switch(expected: Offer, headers: Headers) -> str | None:
    """Why the upstream's 101 does not complete ``expected``, or None if it does."""
    upgrades = _values(headers, b"upgrade")
    if len(upgrades) != 1 or upgrades[0].lower() != b"websocket":
        return (
            f"the upstream's 101 switches to {_protocol(upgrades)!r}, not the requested "
            "'Upgrade: websocket'"
        )
    if b"upgrade" not in _tokens(headers, b"connection"):
        return "the upstream's 101 does not name Upgrade in Connection"
    accepts = _values(headers, b"sec-websocket-accept")
    if accepts != [expected.accept]:
        return "the upstream's 101 carries no matching Sec-WebSocket-Accept for the agent's key"
    return None
