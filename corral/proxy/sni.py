"""Read the server name from a TLS ClientHello without a hand-written parser.

The stdlib ``ssl`` module parses the ClientHello: a server-side ``SSLObject`` over memory BIOs
is fed the bytes the client sent, and its ``sni_callback`` reports the name and then aborts the
handshake. Nothing is ever sent back to the client from this object.

Invariants:
- ``parse_sni`` returns ``(True, name_or_None)`` only when OpenSSL parsed a full ClientHello;
  ``(False, None)`` means "need more bytes"; anything that is not TLS raises ``NotTLS``.
"""

from __future__ import annotations

import ssl

__all__ = ["NotTLS", "parse_sni"]


class NotTLS(Exception):
    pass


class _Seen(Exception):
    pass


def parse_sni(data: bytes) -> tuple[bool, str | None]:
    if not data:
        return False, None
    if data[0] != 0x16:  # TLS handshake record
        raise NotTLS("not a TLS handshake")
    found: list[str | None] = []

    def callback(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        found.append(name)
        # Aborting with an alert stops OpenSSL before it needs a certificate.
        return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sni_callback = callback
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(data)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        if found:
            return True, _normalise(found[0])
        return False, None
    except ssl.SSLError as err:
        if found:
            return True, _normalise(found[0])
        raise NotTLS(f"malformed ClientHello: {err.reason or err}") from None
    if found:
        return True, _normalise(found[0])
    raise NotTLS("handshake ended without a ClientHello")


def _normalise(name: str | None) -> str | None:
    return name.lower().rstrip(".") if name else None
