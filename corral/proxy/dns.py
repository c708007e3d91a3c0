"""The DNS stub inside the sandbox: allowed names get synthetic addresses, others NXDOMAIN.

dnspython parses and builds every message. A name is allowed when the policy's connection
decision for it on port 443 or 80 is not ``deny``.

Invariants:
- Every query is audited (name, type, answer) before the answer is sent.
- Answers only ever contain synthetic addresses (see ``names``); the real address is resolved
  later by the proxy, which dials it itself. No query is forwarded anywhere: no DNS
  exfiltration channel.
- Malformed queries are dropped (FORMERR when the header parsed), never crash the stub.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from corral.proxy import decide
from corral.proxy.context import ProxyContext

__all__ = ["TTL", "answer", "serve_dns"]

TTL = 60


def _allowed(ctx: ProxyContext, name: str) -> bool:
    return any(decide.connect(ctx.policy, name, port).action != "deny" for port in (443, 80))


def answer(ctx: ProxyContext, wire: bytes) -> tuple[bytes | None, dict[str, Any]]:
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None, {"name": "-", "rcode": "FORMERR", "answer": "malformed query"}
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire(), {"name": "-", "rcode": "FORMERR"}
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    qtype = dns.rdatatype.to_text(question.rdtype)
    fields: dict[str, Any] = {"name": name or ".", "qtype": qtype, "rcode": "NOERROR"}
    if question.rdclass != dns.rdataclass.IN or not name or not _allowed(ctx, name):
        response.set_rcode(dns.rcode.NXDOMAIN)
        fields["rcode"] = "NXDOMAIN"
        return response.to_wire(), fields
    v4, v6 = ctx.names.addresses(name)
    if question.rdtype == dns.rdatatype.A:
        response.answer.append(dns.rrset.from_text(question.name, TTL, "IN", "A", v4))
        fields["answer"] = v4
    elif question.rdtype == dns.rdatatype.AAAA:
        response.answer.append(dns.rrset.from_text(question.name, TTL, "IN", "AAAA", v6))
        fields["answer"] = v6
    else:
        pass  # NODATA: the name exists, but only A/AAAA are served
    return response.to_wire(), fields


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        asyncio.get_running_loop().create_task(self._handle(data, addr))

    async def _handle(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            reply, fields = answer(self.ctx, data)
        except Exception as err:  # fail closed: no answer
            reply, fields = None, {"name": "-", "rcode": "SERVFAIL", "answer": type(err).__name__}
        try:
            await self.ctx.audit.emit("dns.query", **fields)
        except Exception:
            return  # not durable -> not answered
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def serve_dns(ctx: ProxyContext, socks: list[socket.socket]) -> list[asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    for sock in socks:
        sock.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(ctx), sock=sock)
        transports.append(transport)
    return transports
