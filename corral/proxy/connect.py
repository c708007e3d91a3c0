"""TLS-or-tunnel connections: CONNECT requests and transparently captured port-443 traffic.

Both arrive here with a host and port already known (the CONNECT target, or the name the DNS
stub handed out for the captured address); the connection's mode is decided on those alone.

Invariants:
- ``deny``: 403 before any byte is tunnelled (CONNECT) or the connection is closed (captured).
- The ClientHello's SNI must equal the host (an IP-literal host may come without SNI); any
  mismatch closes the connection, audited, before a byte reaches the upstream.
- ``direct``: the address checked by ``resolve`` is dialled and bytes are copied unchanged.
- ``inspect``: TLS is terminated with a leaf for exactly that host, and every request inside is
  decided again in full by ``http1.Session``. A handshake the agent breaks off is audited as an
  ``error`` of component ``proxy.tls`` whose message says whether the agent rejected corral's
  certificate (and with which alert); the run summary repeats it (``corral.audit.summary``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from corral.policy.types import Decision
from corral.proxy import decide, deny
from corral.proxy.agent_parser import Request
from corral.proxy.context import ProxyContext
from corral.proxy.http1 import BadRequest, Pinned, Session, normalise_host
from corral.proxy.lookup import Refused, is_ip
from corral.proxy.sni import NotTLS, parse_sni
from corral.proxy.streams import RawStream, Stream, TLSStream
from corral.proxy.tunnel import pipe
from corral.proxy.upstream import UpstreamError, dial

__all__ = ["agent_tls_failure", "establish", "handle_connect", "read_client_hello"]

HELLO_LIMIT = 64 * 1024
HELLO_TIMEOUT = 10.0
AGENT_TLS = "proxy.tls"  # the audit component corral.audit.summary reports to the user
# Alerts by which a client says it does not accept the certificate it was shown (RFC 8446 6.2).
_CERT_ALERTS = frozenset({
    "bad certificate", "unsupported certificate", "certificate revoked", "certificate expired",
    "certificate unknown", "unknown ca", "access denied", "certificate required",
})


def agent_tls_failure(host: str, err: BaseException) -> str:
    """The user-facing sentence for a failed handshake between the agent and the proxy."""
    reason = getattr(err, "reason", None) if isinstance(err, ssl.SSLError) else None
    if isinstance(err, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        reason = None  # node closes, Bun resets: neither sends an alert for a refused cert
    if reason and "ALERT_" in reason:
        alert = reason.split("ALERT_", 1)[1].lower().replace("_", " ")
        if alert in _CERT_ALERTS:
            return f"the agent rejected corral's certificate for {host}: TLS alert {alert!r}"
        return f"TLS with the agent failed for {host}: the agent sent TLS alert {alert!r}"
    if reason:
        return f"TLS with the agent failed for {host}: {reason.lower().replace('_', ' ')}"
    # Some clients drop the connection on a certificate they refuse, without an alert.
    return (
        f"the agent rejected corral's certificate for {host}: it ended the connection during "
        "the handshake without a TLS alert"
    )


async def read_client_hello(stream: RawStream) -> tuple[bytes, str | None, bool]:
    """Read until a full ClientHello is seen: (bytes read, SNI, is_tls). Pushes nothing back."""
    data = b""
    async with asyncio.timeout(HELLO_TIMEOUT):
        while len(data) < HELLO_LIMIT:
            chunk = await stream.read(HELLO_LIMIT - len(data))
            if not chunk:
                break
            data += chunk
            try:
                complete, name = parse_sni(data)
            except NotTLS:
                return data, None, False
            if complete:
                return data, name, True
    return data, None, False


async def handle_connect(ctx: ProxyContext, session: Session, req: Request) -> None:
    target = req.target.decode("ascii", "replace")
    parts = urlsplit("//" + target)
    try:
        host = normalise_host(parts.hostname or "")
        port = parts.port
    except (BadRequest, ValueError):
        port = None
    if not parts.hostname or port is None:
        await session.bad_request(BadRequest(f"CONNECT target must be host:port, got {target!r}"))
        return
    fields: dict[str, Any] = {"method": "CONNECT", "host": host, "port": port}
    decision = decide.connect(ctx.policy, host, port)
    if decision.action == "deny":
        await session.deny(decision, f"CONNECT {host}:{port}", fields)
        return
    try:
        # a platform connection's requests go to corral server's relay, which resolves
        address = None if decision.action == "platform" else await ctx.resolver.choose(
            host, port, decision.rule)
    except Refused as err:
        await session.deny(deny.refusal(decision, str(err)), f"CONNECT {host}:{port}", fields)
        return
    session.response.head(200, [])
    await session.client.drain()
    client = session.client
    assert isinstance(client, RawStream)
    client.pushback = session.reader.trailing_data + client.pushback
    await establish(ctx, client, host, port, decision, address, via="connect")


async def _refuse(
    ctx: ProxyContext, decision: Decision, message: str, fields: dict[str, Any]
) -> None:
    refusal = deny.refusal(decision, message)
    text = deny.deny_text(refusal, f"connection to {fields['host']}:{fields['port']}")
    await ctx.audit.emit("proxy.deny", rule=refusal.origin, reason=text, status=403, **fields)


async def establish(
    ctx: ProxyContext,
    client: RawStream,
    host: str,
    port: int,
    decision: Decision,
    address: str | None,
    *,
    via: str,
) -> None:
    """Carry an allowed connection to ``host:port`` in the decided mode."""
    fields: dict[str, Any] = {"host": host, "port": port, "mode": decision.action}
    try:
        hello, sni, is_tls = await read_client_hello(client)
    except TimeoutError:
        return
    if not hello and decision.action in ("inspect", "platform"):
        # Closed before sending a byte (HTTP clients drop spare dials): the session would only
        # read that end, so skip building it.
        return
    client.pushback = hello + client.pushback
    if is_tls:
        if sni is None and not is_ip(host):
            await _refuse(ctx, decision, "the TLS ClientHello carries no server name", fields)
            return
        # Some clients (Go's hey) send "host:port" as the server name; same host, same port.
        if sni is not None and sni not in (host, f"{host}:{port}"):
            await _refuse(
                ctx, decision, f"TLS server name {sni!r} does not match the target {host!r}", fields
            )
            return
    if decision.action in ("inspect", "platform"):
        if not is_tls:
            await Session(ctx, client, Pinned(host, port, tls=False)).run()
            return
        tls = TLSStream(client, ctx.ca.server_context(host))
        try:
            await tls.handshake()
        except Exception as err:  # ssl.SSLError, a reset, an EOF: the agent broke it off
            await ctx.audit.emit(
                "error", component=AGENT_TLS, message=agent_tls_failure(host, err)
            )
            return
        await Session(ctx, tls, Pinned(host, port, tls=True)).run()
        return
    if not is_tls and via == "connect":
        await _refuse(ctx, decision, "a direct tunnel carries TLS only", fields)
        return
    await _tunnel(ctx, client, host, port, decision, address, fields)


async def _tunnel(
    ctx: ProxyContext,
    client: Stream,
    host: str,
    port: int,
    decision: Decision,
    address: str | None,
    fields: dict[str, Any],
) -> None:
    started = time.monotonic()
    try:
        if address is None:
            address = await ctx.resolver.choose(host, port, decision.rule)
        await ctx.audit.emit("proxy.allow", rule=decision.origin, **fields)
        upstream = await dial(address, host, port, tls=None, proxy=ctx.upstream_proxy)
    except Refused as err:
        await _refuse(ctx, decision, str(err), fields)
        return
    except UpstreamError as err:
        await ctx.audit.emit(
            "proxy.allow", rule=decision.origin, status=err.status, reason=err.reason, **fields
        )
        return
    try:
        sent, received = await pipe(client, upstream)
    finally:
        upstream.close()
    await ctx.audit.emit(
        "proxy.allow",
        rule=decision.origin,
        reason="tunnel closed",
        bytes_out=sent,
        bytes_in=received,
        duration_ms=round((time.monotonic() - started) * 1000, 3),
        **fields,
    )
