from __future__ import annotations

import ssl

import pytest

from corral.proxy.sni import NotTLS, parse_sni


def _hello(name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    if name is None:
        ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_sni_read_and_partial() -> None:
    hello = _hello("API.Example.COM")
    assert parse_sni(hello) == (True, "api.example.com")
    assert parse_sni(hello[:50]) == (False, None)
    assert parse_sni(_hello(None)) == (True, None)


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x00\x05hello"])
def test_not_tls(data: bytes) -> None:
    with pytest.raises(NotTLS):
        parse_sni(data)
