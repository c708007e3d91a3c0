"""``POST /relay/v1/{run}``: a launcher's ``platform`` request, carried upstream by the server.

A plain ASGI middleware, outermost in the app: relay requests never pass the API's body
bound (a relayed upload streams, whatever its size) nor FastAPI's routing. The protocol is
``corral.proxy.relay_wire``; what may be relayed is ``grant``; where to is ``upstream``.

Invariants:
- Nothing is sent upstream before ``grant`` allowed it (token, run, registered policy digest,
  a ``platform`` decision) and recorded the injection.
- The request body streams from the launcher to the upstream chunk by chunk (one chunk in
  memory at a time); the response streams back the same way, each chunk through the proxy's
  own scrubber (``corral.proxy.scrub``; a compressed body is decoded first, as the local
  proxy does), so the secret, in any form the scrubber knows, never reaches the launcher.
- A failure before the response head is the relay's own refusal (``corral-relay-error``);
  after it, the connection to the launcher is cut (the launcher sees an incomplete body).
- The secret is held in local variables of one request only; errors never carry it.
- A rule with ``meter:`` is admitted by ``spend`` before anything goes upstream (its body read
  whole, reserved or answered in the provider's shape); its response is metered as it streams
  back and settled exactly once however the exchange ends.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import h11

from corral.proxy import relay_wire as wire
from corral.proxy.decode import DecodeError, Decoder, UnsupportedEncoding, codings
from corral.proxy.headers import forward_headers
from corral.proxy.inject import Injection, InjectionError, set_header
from corral.proxy.lookup import Refused
from corral.proxy.scrub import BodyScrub, scrubber_for
from corral.proxy.upstream import UpstreamError
from corral.server.admin_log import record_now
from corral.server.config import ServerConfig
from corral.server.db import Database
from corral.server.relay.grant import Grant, RelayRefused, grant
from corral.server.relay.spend import UNMETERED, Metered, RelaySpend, send_reply
from corral.server.relay.upstream import Destinations, Pool, tls_context

__all__ = ["RelayMiddleware"]

Scope = dict[str, Any]
UPSTREAM_TIMEOUT = 300.0
_DROP_ENCODED = frozenset({b"content-encoding", b"content-length"})


async def _refuse(send: Any, status: int, code: str, message: str) -> None:
    import json

    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (wire.ERROR, code.encode())]})
    await send({"type": "http.response.body", "body": body})


class _Body:
    """The launcher's request body: the preamble line, then the agent's body as it comes."""

    def __init__(self, receive: Any) -> None:
        self.receive = receive
        self.rest = b""
        self.done = False

    async def preamble(self) -> wire.Preamble:
        buf = b""
        while b"\n" not in buf:
            if self.done or len(buf) > wire.MAX_PREAMBLE:
                raise RelayRefused(400, "bad_preamble", "no preamble line within "
                                   f"{wire.MAX_PREAMBLE} bytes")
            buf += await self.chunk()
        line, _, self.rest = buf.partition(b"\n")
        try:
            return wire.decode_preamble(line)
        except wire.PreambleError as err:
            raise RelayRefused(400, "bad_preamble", str(err)) from None

    async def chunk(self) -> bytes:
        if self.rest:
            data, self.rest = self.rest, b""
            return data
        if self.done:
            return b""
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("the launcher went away")
        self.done = not message.get("more_body", False)
        return bytes(message.get("body", b""))


class RelayMiddleware:
    def __init__(self, app: Any, *, config: ServerConfig, db: Database) -> None:
        self.app, self.config, self.db = app, config, db
        self.destinations = Destinations(config.relay.allow_private)
        self.pool = Pool()
        self.spend = RelaySpend(db, config.prices_file)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(wire.PATH):
            await self.app(scope, receive, send)
            return
        state = {"started": False}

        async def tracked(message: dict[str, Any]) -> None:
            state["started"] = True
            await send(message)

        try:
            await self._relay(scope, receive, tracked)
        except RelayRefused as err:
            if state["started"]:
                raise  # the head is out: the launcher sees the body cut short
            await _refuse(send, err.status, err.code, err.message)
        except ConnectionResetError:
            return  # the launcher went away

    async def _relay(self, scope: Scope, receive: Any, send: Any) -> None:
        run = scope["path"][len(wire.PATH):]
        if scope["method"] != "POST" or not run or "/" in run:
            raise RelayRefused(404, "not_found", "the relay takes POST /relay/v1/{run}")
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise RelayRefused(401, "unauthorized", "send the run's sandbox token as "
                               "'Authorization: Bearer <token>'")
        body = _Body(receive)
        pre = await body.preamble()
        client = scope["client"][0] if scope.get("client") else "?"
        granted = await self._grant(run, secret.strip(), pre, client)
        metered: Metered | None = None
        if granted.decision.rule is not None and granted.decision.rule.meter:
            admitted = await self.spend.admit(granted, pre, body)
            if not isinstance(admitted, Metered):
                await send_reply(send, admitted)
                return
            metered = admitted
        try:
            await self._forward(granted, pre, body, send, metered)
        except Refused as err:  # the destination checks: a policy matter, not a failure
            raise RelayRefused(403, "destination_refused", f"{pre.host}:{pre.port}: {err}"
                               ) from None
        except (UpstreamError, InjectionError, h11.ProtocolError, OSError) as err:
            status = getattr(err, "status", 502)
            raise RelayRefused(status, "upstream_failed", f"{pre.host}:{pre.port}: "
                               f"{getattr(err, 'reason', None) or err}") from None
        finally:
            if metered is not None:
                metered.close()

    async def _grant(self, run: str, secret: str, pre: wire.Preamble, client: str) -> Grant:
        """``grant`` on the event loop when its one write cannot wait (SQLite, this process's
        writer slot free: its statements are in-process, ~0.2 ms in all, and two thread hops
        would cost as much again); otherwise in a worker thread (PostgreSQL's statements wait
        on the network, and a busy writer slot on another writer)."""
        kek = self.config.kek_path()
        slot = self.db.free_writer()
        if slot is None:
            return await asyncio.to_thread(grant, self.db, kek, run, secret, pre, client)
        with slot:
            return grant(self.db, kek, run, secret, pre, client, writer=nullcontext())

    async def _forward(self, granted: Grant, pre: wire.Preamble, body: _Body, send: Any,
                       metered: Metered | None = None) -> None:
        rule = granted.decision.rule
        headers = [(b"host", _authority(pre).encode())]
        headers += [(n, v) for n, v in forward_headers(pre.headers, False) if n != b"host"]
        needles = None
        if granted.binding is not None and granted.secret is not None:
            if not pre.tls and not granted.binding.plaintext:
                raise RelayRefused(403, "policy_refused", f"{pre.host}: the credential "
                                   f"{granted.binding.name} goes over TLS only")
            if pre.method == "TRACE":
                raise RelayRefused(403, "policy_refused", "TRACE would echo the credential")
            headers = [(n, v) for n, v in headers if n != b"accept-encoding"]
            headers.append((b"accept-encoding", b"identity"))
            secret = {"secret": granted.secret}
            headers = set_header(headers, Injection(granted.binding, secret))
            needles = scrubber_for(granted.binding, secret)
        if metered is not None:
            headers = metered.headers(headers)
        pem = rule.tls_ca if rule is not None else None
        if isinstance(pem, Path):  # the server never reads a file a project's policy names
            raise UpstreamError(502, "tls_ca: a server's policy gives the CA inline (PEM), "
                                "not a path")
        tls = tls_context(pem) if pre.tls else None
        address = await self.destinations.choose(pre.host, pre.port)
        up = await self.pool.get(address, pre.host, pre.port, tls)
        try:
            up.send(h11.Request(method=pre.method, target=pre.target, headers=headers))
            if metered is not None:  # its body was read whole (and may have been rewritten)
                metered.sent = True
                up.send(h11.Data(data=metered.body))
            else:
                while chunk := await body.chunk():
                    up.send(h11.Data(data=chunk))
                    await up.writer.drain()
            up.send(h11.EndOfMessage())
            await up.writer.drain()
            scrubbed = await self._respond(up, pre, needles, send, metered or UNMETERED)
        except BaseException:
            up.close()
            raise
        self.pool.put(up)
        if scrubbed:
            await asyncio.to_thread(record_now, self.db, f"run:{granted.run}",
                                    "credential.scrub", f"{granted.project}/{pre.host}",
                                    run=granted.run, count=scrubbed,
                                    binding=granted.binding.name if granted.binding else None)

    async def _respond(self, up: Any, pre: wire.Preamble, needles: Any, send: Any,
                       metered: Metered = UNMETERED) -> int:
        """Stream the upstream's response to the launcher; the number of scrubbed needles."""
        stream: BodyScrub | None = needles.stream() if needles is not None else None
        decoder: Decoder | None = None
        count = 0
        started = False
        while True:
            event = await up.next_event(UPSTREAM_TIMEOUT)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    raise UpstreamError(502, "upstream switched protocols (not relayed)")
                continue
            if isinstance(event, h11.Response):
                headers, decoder, count = _head(event, pre, needles)
                metered.response(event.status_code, event.headers)
                headers.append((wire.MARK, b"upstream"))
                await send({"type": "http.response.start", "status": event.status_code,
                            "headers": headers})
                started = True
            elif isinstance(event, h11.Data):
                for piece in _decoded(decoder, bytes(event.data)):
                    metered.feed(piece)
                    out = stream.feed(piece) if stream is not None else piece
                    if out:
                        await send({"type": "http.response.body", "body": out,
                                    "more_body": True})
            elif isinstance(event, h11.EndOfMessage):
                tail = _tail(decoder, stream)
                count += stream.count if stream is not None else 0
                metered.finish()
                await send({"type": "http.response.body", "body": tail, "more_body": False})
                return count
            elif isinstance(event, h11.ConnectionClosed):
                if not started:
                    raise UpstreamError(502, "upstream closed the connection without answering")
                raise OSError("upstream closed the connection mid-response")


def _head(event: h11.Response, pre: wire.Preamble, needles: Any
          ) -> tuple[list[tuple[bytes, bytes]], Decoder | None, int]:
    """The response head for the launcher, scrubbed and re-framed as the local proxy does it
    (``response_scrub``); the body decoder it needs, and how many needles were replaced."""
    decoder, count = None, 0
    headers = [(n, v) for n, v in forward_headers(event.headers, False)
               if not n.startswith(wire.MARK)]
    if needles is not None:
        headers, _reason, count = needles.headers(headers, b"")
        applied = codings(headers)
        if applied and pre.method != "HEAD":
            try:
                decoder = Decoder(applied)
            except UnsupportedEncoding as err:
                raise UpstreamError(502, f"upstream sent Content-Encoding {err} on a response "
                                    "that may carry the credential; it cannot be scanned") from None
            headers = [(n, v) for n, v in headers if n not in _DROP_ENCODED]
        elif not needles.same_length:
            headers = [(n, v) for n, v in headers if n != b"content-length"]
    if pre.method == "HEAD":
        headers = [(wire.HEAD_LENGTH if n == b"content-length" else n, v) for n, v in headers]
    return wire.carry([(n, v) for n, v in headers if n != b"transfer-encoding"]), decoder, count


def _decoded(decoder: Decoder | None, data: bytes) -> list[bytes]:
    if decoder is None:
        return [data]
    try:
        return list(decoder.feed(data))
    except DecodeError as err:
        raise UpstreamError(502, str(err)) from None


def _tail(decoder: Decoder | None, stream: BodyScrub | None) -> bytes:
    """What the decoder and the scrubber still hold at the end of the body."""
    if stream is None:
        return b""
    tail = b""
    if decoder is not None:
        try:
            tail = b"".join(stream.feed(p) for p in decoder.finish())
        except DecodeError as err:
            raise UpstreamError(502, str(err)) from None
    return tail + stream.flush()


def _authority(pre: wire.Preamble) -> str:
    host = f"[{pre.host}]" if ":" in pre.host else pre.host
    default = 443 if pre.tls else 80
    return host if pre.port == default else f"{host}:{pre.port}"
