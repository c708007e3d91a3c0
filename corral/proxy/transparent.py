"""Connections the sandbox's netfilter rules redirected to the proxy (tools that ignore proxy
variables). The original destination comes from conntrack (``SO_ORIGINAL_DST``).

Invariants:
- A captured destination in the synthetic pool maps back to the name the DNS stub answered;
  a synthetic address nobody was handed is refused.
- A captured real IP (the agent skipped DNS) is judged as that IP literal: a TLS server name
  that differs from it is refused, because the proxy cannot tell which name the IP serves.
- After that, the connection is decided exactly like a CONNECT (TLS) or plain HTTP request.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from corral.policy.types import Decision
from corral.proxy import decide
from corral.proxy.connect import _refuse, establish, read_client_hello
from corral.proxy.context import ProxyContext
from corral.proxy.http1 import Pinned, Session
from corral.proxy.streams import RawStream

__all__ = ["handle_transparent", "original_destination"]

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The pre-NAT destination of a redirected connection, or None if it was not redirected."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            address = str(ipaddress.IPv6Address(raw[8:24]))
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            address = socket.inet_ntoa(raw[4:8])
    except OSError:
        return None
    local = sock.getsockname()
    if (ipaddress.ip_address(address), port) == (ipaddress.ip_address(local[0]), local[1]):
        return None
    mapped = ipaddress.ip_address(address)
    if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
        address = str(mapped.ipv4_mapped)
    return address, port


async def handle_transparent(
    ctx: ProxyContext, client: RawStream, address: str, port: int
) -> None:
    name = ctx.names.name_for(address)
    fields = {"host": name or address, "port": port, "mode": "transparent"}
    if name is None and ctx.names.is_synthetic(address):
        await _refuse(ctx, Decision("deny", None, ""), "unknown synthetic address", fields)
        return
    host = name or address
    hello, _sni, is_tls = await read_client_hello(client)
    client.pushback = hello + client.pushback
    if not is_tls:
        await Session(ctx, client, Pinned(host, port, tls=False)).run()
        return
    decision = decide.connect(ctx.policy, host, port)
    if decision.action == "deny":
        await _refuse(ctx, decision, decision.message, fields)
        return
    await establish(ctx, client, host, port, decision, None, via="transparent")
