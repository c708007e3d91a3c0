"""``corral.proxy.dns``: the stub answers allowed names with synthetic addresses only,
refuses the rest with NXDOMAIN, never forwards a query, survives any bytes, and audits every
query before its answer leaves (over a real UDP socket, asked with dnspython)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import dns.flags
import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.policy.types import Decision
from corral.proxy import dns as stub
from corral.proxy.names import V4_POOL, V6_POOL

from .unit_harness import Policy, Recorder, allow, context

ALLOWED = {"api.test", "git.test"}


def _policy() -> Policy:
    def connect(host: str, port: int) -> Decision:
        return allow() if host in ALLOWED and port == 443 else Decision("deny", None, "no")
    return Policy(connect)


def _ask(name: str, qtype: str = "A") -> tuple[dns.message.Message, dict[str, object]]:
    ctx = context(_policy())
    wire, fields = stub.answer(ctx, dns.message.make_query(name, qtype).to_wire())
    assert wire is not None
    return dns.message.from_wire(wire), fields


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_names = st.one_of(st.sampled_from(sorted(ALLOWED)),
                   st.lists(_label, min_size=1, max_size=4).map(".".join))


@settings(deadline=None)  # the first example pays for dnspython's lazy imports
@given(_names, st.sampled_from(["A", "AAAA", "TXT", "MX", "ANY", "CNAME"]))
def test_only_synthetic_addresses_and_only_for_allowed_names(name: str, qtype: str) -> None:
    reply, fields = _ask(name, qtype)
    addresses = [ipaddress.ip_address(r.to_text()) for rrset in reply.answer for r in rrset]
    if name.lower() not in ALLOWED:
        assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.answer
        assert fields["rcode"] == "NXDOMAIN"
        return
    assert reply.rcode() == dns.rcode.NOERROR
    if qtype in ("A", "AAAA"):
        assert len(addresses) == 1
    else:
        assert addresses == []  # NODATA: only A/AAAA are served
    for ip in addresses:
        assert ip in (V4_POOL if ip.version == 4 else V6_POOL)
        assert fields["answer"] == str(ip)


def test_a_name_keeps_its_addresses_and_case_does_not_matter() -> None:
    ctx = context(_policy())
    first = stub.answer(ctx, dns.message.make_query("api.test", "A").to_wire())[1]
    again = stub.answer(ctx, dns.message.make_query("API.Test", "A").to_wire())[1]
    assert first["answer"] == again["answer"] and again["name"] == "api.test"


def test_a_policy_that_raises_denies_the_name() -> None:
    def broken(host: str, port: int) -> Decision:
        raise RuntimeError("matcher bug")
    wire, _ = stub.answer(context(Policy(broken)),
                               dns.message.make_query("api.test", "A").to_wire())
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.NXDOMAIN


def test_other_classes_and_two_questions() -> None:
    query = dns.message.make_query("api.test", "A", rdclass="CH")
    wire, _ = stub.answer(context(_policy()), query.to_wire())
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.NXDOMAIN
    two = dns.message.make_query("api.test", "A")
    two.question.append(dns.message.make_query("git.test", "A").question[0])
    wire, fields = stub.answer(context(_policy()), two.to_wire())
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.FORMERR
    assert fields["rcode"] == "FORMERR"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_never_raise(wire: bytes) -> None:
    reply, fields = stub.answer(context(_policy()), wire)
    assert fields["rcode"] in ("NOERROR", "NXDOMAIN", "FORMERR")
    if reply is not None:
        dns.message.from_wire(reply)  # whatever goes back parses


async def _serve_and_ask(audit: Recorder, wires: list[bytes]) -> list[bytes | None]:
    ctx = context(_policy())
    ctx.audit = audit
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    transports = await stub.serve_dns(ctx, [server])
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    client.connect(server.getsockname())
    audit.agent = client  # "had bytes" at emit time = the answer arrived before its record
    loop = asyncio.get_running_loop()
    replies: list[bytes | None] = []
    try:
        for wire in wires:
            client.send(wire)
            try:
                replies.append(await asyncio.wait_for(loop.sock_recv(client, 4096), 0.5))
            except TimeoutError:
                replies.append(None)
    finally:
        for transport in transports:
            transport.close()
        client.close()
    return replies


def test_served_over_udp_audited_before_answered() -> None:
    audit = Recorder()
    queries = [dns.message.make_query(n, "A") for n in ("api.test", "evil.test")]
    replies = asyncio.run(_serve_and_ask(audit, [q.to_wire() for q in queries]))
    assert [e[1]["name"] for e in audit.events] == ["api.test", "evil.test"]
    assert audit.kinds() == ["dns.query", "dns.query"]
    assert audit.agent_had_bytes == [False, False]
    got = [dns.message.from_wire(r) for r in replies if r is not None]
    assert [m.rcode() for m in got] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN]
    assert [m.id for m in got] == [q.id for q in queries]
    assert got[0].flags & dns.flags.QR


def test_malformed_query_audited_and_dropped() -> None:
    audit = Recorder()
    replies = asyncio.run(_serve_and_ask(audit, [b"\x01"]))
    assert replies == [None]
    assert audit.events == [("dns.query", {"name": "-", "rcode": "FORMERR",
                                           "answer": "malformed query"})]


@pytest.mark.parametrize("name", ["api.test", "evil.test"])
def test_no_answer_when_the_record_is_not_durable(name: str) -> None:
    audit = Recorder(fail=True)
    replies = asyncio.run(_serve_and_ask(audit, [dns.message.make_query(name, "A").to_wire()]))
    assert replies == [None]
