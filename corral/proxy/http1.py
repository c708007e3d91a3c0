"""HTTP/1.1 on the agent's side of the proxy: parse with h11, decide, forward, stream back.

One ``Session`` serves one client connection: the explicit proxy (absolute-form requests and
CONNECT), the inside of an intercepted TLS connection, or a transparently captured plain-HTTP
connection (the latter two are ``pinned`` to one host and port).

Invariants:
- Every request is decided in full (host, port, method, path) before anything is sent upstream;
  a deny is audited before the 403 is written, an allowed request before the response head is
  relayed (status and declared length; the body then streams). Any exception in deciding denies.
- Requests h11 rejects, and smuggling-shaped ones h11 would tolerate (both Content-Length and
  Transfer-Encoding, obs-fold header lines, dot-segments in the path) get 400 and the
  connection is closed. Bodies are re-framed by h11 on the way out, never copied raw.
- In a pinned session the Host header must name the pinned host (Host = SNI = CONNECT target).
- Bodies stream in both directions chunk by chunk; nothing is buffered whole except an AWS
  body whose hash must be computed (bounded).
- Credentials are injected only through ``inject.plan``.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import h11

from corral.policy.types import Decision
from corral.proxy import decide, deny, inject, sigv4
from corral.proxy.context import ProxyContext
from corral.proxy.resolve import Refused
from corral.proxy.streams import READ_SIZE, Stream
from corral.proxy.tunnel import pipe
from corral.proxy.upstream import UpstreamError, dial
from corral.proxy.upstream_http import FastUpstream

__all__ = ["BadRequest", "Pinned", "Session", "normalise_host"]

MAX_HEADER_BYTES = 64 * 1024
_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"te",
    b"trailer",
    b"upgrade",
}
_FOLD = re.compile(rb"\r?\n[ \t]")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


class BadRequest(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Pinned:
    host: str
    port: int
    tls: bool


def normalise_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise BadRequest(f"invalid host name {host!r}") from None


def _authority(host: str, port: int, tls: bool) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == (443 if tls else 80) else f"{shown}:{port}"


class _Upstream:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)

    async def next_event(self, timeout: float, before_read: Stream | None = None) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if before_read is not None:
                await before_read.drain()  # what we relayed so far goes out before we wait
            try:
                async with asyncio.timeout(timeout):
                    data = await self.stream.read(READ_SIZE)
            except TimeoutError:
                raise UpstreamError(504, "upstream did not answer in time") from None
            self.conn.receive_data(data)

    def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.stream.write(data)


class Session:
    def __init__(self, ctx: ProxyContext, client: Stream, pinned: Pinned | None = None) -> None:
        self.ctx = ctx
        self.client = client
        self.pinned = pinned
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.upstreams: dict[tuple[str, int, bool], _Upstream] = {}
        self.fast_upstreams: dict[tuple[str, int, bool], FastUpstream] = {}
        self._head = b""
        self._host_ok: set[bytes] = set()
        self._waiting_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- client side helpers -------------------------------------------------------------

    def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.client.write(data)

    async def _client_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.Request):
                    self._head = b""
                return event
            self._waiting_since = time.monotonic()
            try:
                data = await self.client.read(READ_SIZE)
            finally:
                self._waiting_since = None
            if self.conn.their_state in (h11.IDLE, h11.DONE):
                # h11 unfolds obs-fold lines; a proxy must reject them (RFC 9112 §5.2).
                # h11 bounds only incomplete heads; bound complete ones too.
                self._head += data
                end = self._head.find(b"\r\n\r\n")
                head = self._head if end < 0 else self._head[: end + 2]
                if len(head) > MAX_HEADER_BYTES:
                    raise BadRequest(f"request head over {MAX_HEADER_BYTES} bytes")
                if _FOLD.search(head):
                    raise BadRequest("obsolete line folding in request headers")
                if end >= 0:
                    self._head = b""
            self.conn.receive_data(data)

    async def _simple(
        self, status: int, text: str, extra: list[tuple[str, str]] | None = None
    ) -> None:
        body = text.encode()
        headers = extra or [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        try:
            self._send(h11.Response(status_code=status, headers=headers))
            self._send(h11.Data(data=body))
            self._send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            # Response already started or state broken: raw bytes, then close.
            self.client.write(
                b"HTTP/1.1 %d Error\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (status, len(body), body)
            )
        await self.client.drain()

    async def _deny(self, decision: Decision, what: str, fields: dict[str, Any]) -> None:
        text = deny.deny_text(decision, what)
        await self.ctx.audit.emit(
            "proxy.deny", rule=decision.origin, reason=text, status=403, **fields
        )
        body = text.encode()
        await self._simple(403, text, deny.response_headers(decision, body))

    # -- main loop -----------------------------------------------------------------------

    def _watchdog(self) -> None:
        """Close an agent connection idle past the limit (one timer per period, not per read)."""
        since, limit = self._waiting_since, self.ctx.idle_timeout
        now = time.monotonic()
        if since is not None and now - since >= limit:
            self.client.close()
            return
        delay = limit - (now - since) if since is not None else limit
        self._timer = asyncio.get_running_loop().call_later(delay, self._watchdog)

    async def run(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(
            self.ctx.idle_timeout, self._watchdog
        )
        try:
            while True:
                try:
                    event = await self._client_event()
                except (h11.RemoteProtocolError, BadRequest) as err:
                    await self._bad_request(err)
                    return
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if not isinstance(event, h11.Request):
                    return
                keep = await self._request(event)
                if not keep:
                    return
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                else:
                    return
        finally:
            if self._timer is not None:
                self._timer.cancel()
            for up in self.upstreams.values():
                up.stream.close()
            for fast in self.fast_upstreams.values():
                fast.stream.close()
            self.upstreams.clear()
            self.fast_upstreams.clear()

    async def _bad_request(self, err: BaseException) -> None:
        await self.ctx.audit.emit(
            "proxy.deny",
            host=self.pinned.host if self.pinned else "-",
            rule="malformed request",
            status=400,
            reason=str(err)[:300],
        )
        await self._simple(400, f"corral: malformed request rejected: {err}\n")

    def _target(self, req: h11.Request) -> tuple[str, int, bool, str]:
        """(host, port, tls, origin-form target) for a request on this session."""
        raw = req.target.decode("ascii", "strict")
        host_header = next((v for n, v in req.headers if n == b"host"), None)
        if self.pinned is None:
            parts = urlsplit(raw)
            if parts.scheme != "http" or not parts.hostname:
                raise BadRequest("a proxy request needs an absolute http:// URL (or CONNECT)")
            host, port, tls = normalise_host(parts.hostname), parts.port or 80, False
            origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        else:
            if not raw.startswith("/"):
                if raw == "*" and req.method == b"OPTIONS":
                    raw = "*"
                else:
                    parts = urlsplit(raw)
                    if not parts.hostname:
                        raise BadRequest("request target must be origin-form")
                    raw = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                    host_header = parts.netloc.encode()
            host, port, tls = self.pinned.host, self.pinned.port, self.pinned.tls
            origin = raw
        if host_header is not None and host_header not in self._host_ok:
            parts = urlsplit("//" + host_header.decode("ascii", "strict"))
            named = normalise_host(parts.hostname or "")
            if named != host or (parts.port is not None and parts.port != port):
                raise _Mismatch(
                    f"Host header {host_header.decode()!r} does not match the connection's "
                    f"target {_authority(host, port, tls)}"
                )
            if self.pinned is not None:
                self._host_ok.add(host_header)  # same value again on this connection: known good
        path = origin.split("?", 1)[0]
        if _DOT_SEGMENT.search(unquote(path)):
            raise BadRequest("dot-segments in the request path")
        return host, port, tls, origin

    async def _request(self, req: h11.Request) -> bool:
        started = time.monotonic()
        method = req.method.decode("ascii")
        if method == "CONNECT":
            if self.pinned is not None:
                await self._bad_request(BadRequest("CONNECT inside a tunnel"))
                return False
            from corral.proxy.connect import handle_connect

            await handle_connect(self.ctx, self, req)
            return False
        names = {n for n, _ in req.headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            await self._bad_request(BadRequest("both Content-Length and Transfer-Encoding"))
            return False
        try:
            host, port, tls, origin = self._target(req)
        except BadRequest as err:
            await self._bad_request(err)
            return False
        except UnicodeError:
            await self._bad_request(BadRequest("non-ASCII request target"))
            return False
        except _Mismatch as err:
            refusal = Decision("deny", None, str(err))
            host = self.pinned.host if self.pinned else "-"
            await self._deny(refusal, f"{method} request", {"method": method, "host": host})
            return False
        path = origin.split("?", 1)[0]
        fields: dict[str, Any] = {"method": method, "host": host, "port": port, "path": path}
        decision = decide.request(self.ctx.policy, host, port, method, path)
        if decision.action == "deny":
            await self._deny(decision, f"{method} {_authority(host, port, tls)}{path}", fields)
            return False
        try:
            return await self._forward(req, decision, host, port, tls, origin, fields, started)
        except Refused as err:
            await self._deny(deny.refusal(decision, str(err)), f"{method} {host}", fields)
            return False
        except (sigv4.SigV4Error, inject.InjectionError) as err:
            await self._deny(deny.refusal(decision, str(err)), f"{method} {host}", fields)
            return False
        except UpstreamError as err:
            kind = "proxy.inspect" if decision.action == "inspect" else "proxy.allow"
            await self.ctx.audit.emit(
                kind, rule=decision.origin, status=err.status, reason=err.reason, **fields
            )
            if self.conn.our_state is h11.SEND_RESPONSE:
                await self._simple(err.status, f"corral: upstream failure: {err.reason}\n")
            return False
        except (h11.RemoteProtocolError, BadRequest) as err:
            if self.conn.our_state is h11.SEND_RESPONSE:
                await self._bad_request(err)
            return False

    async def _upstream(
        self, host: str, port: int, tls: bool, decision: Decision
    ) -> tuple[_Upstream, bool]:
        key = (host, port, tls)
        up = self.upstreams.get(key)
        if up is not None and up.conn.our_state is h11.IDLE:
            return up, True
        if up is not None:
            up.stream.close()
            del self.upstreams[key]
        rule = decision.rule
        address = await self.ctx.resolver.choose(host, port, rule)
        context = self.ctx.upstream_tls.get(rule.tls_ca if rule else None) if tls else None
        stream = await dial(address, host, port, tls=context, proxy=self.ctx.upstream_proxy)
        up = _Upstream(stream)
        self.upstreams[key] = up
        return up, False

    async def _forward(
        self,
        req: h11.Request,
        decision: Decision,
        host: str,
        port: int,
        tls: bool,
        origin: str,
        fields: dict[str, Any],
        started: float,
    ) -> bool:
        method = fields["method"]
        upgrade = any(n == b"upgrade" for n, _ in req.headers)
        headers = _forward_headers(req.headers, upgrade)
        headers = [(n, v) for n, v in headers if n != b"host"]
        headers.insert(0, (b"host", _authority(host, port, tls).encode()))
        binding = decide.binding_for(self.ctx.policy, decision) if decision.credential else None
        plan = inject.plan(decision, binding, self.ctx.secrets, method=method, tls=tls)
        buffered: list[bytes] | None = None
        if plan is not None and plan.binding.kind == "aws":
            body = None
            if sigv4.needs_body(headers):
                buffered = await self._read_body(sigv4.MAX_BUFFERED_BODY)
                body = b"".join(buffered)
            url = f"{'https' if tls else 'http'}://{_authority(host, port, tls)}{origin}"
            headers = sigv4.resign(method, url, headers, plan.secret, body)
        elif plan is not None:
            headers = inject.set_header(headers, plan)
        if plan is not None:
            await self.ctx.audit.emit(
                "credential.inject",
                binding=plan.binding.name,
                host=host,
                header=plan.binding.header if plan.binding.kind == "header" else "Authorization",
                rule=decision.origin,
            )
        if self.conn.client_is_waiting_for_100_continue:
            self._send(h11.InformationalResponse(status_code=100, headers=[]))
        if (
            req.method not in (b"HEAD", b"CONNECT")
            and not upgrade
            and (plan is None or plan.binding.kind == "header")
            and not any(n == b"expect" for n, _ in headers)
        ):
            return await self._forward_fast(req, decision, host, port, tls, origin, headers,
                                            fields, started)
        up, _reused = await self._upstream(host, port, tls, decision)
        try:
            # Headers h11 already parsed (plus Host and an injected header, both checked) skip
            # h11's second validation pass; re-signed AWS headers are validated in full.
            trusted = plan is None or plan.binding.kind == "header"
            up.send(
                h11.Request(
                    method=req.method, target=origin.encode(), headers=headers, _parsed=trusted
                )
            )
        except h11.LocalProtocolError as err:
            raise BadRequest(str(err)) from None
        # Request body, streamed (or replayed from the AWS buffer).
        if buffered is not None:
            for chunk in buffered:
                up.send(h11.Data(data=chunk))
            up.send(h11.EndOfMessage())
        else:
            while True:
                event = await self._client_event()
                if isinstance(event, h11.Data):
                    up.send(h11.Data(data=event.data))
                    await up.stream.drain()
                elif isinstance(event, h11.EndOfMessage):
                    up.send(h11.EndOfMessage(headers=[]))
                    break
                else:
                    raise BadRequest("request body ended early")
        await up.stream.drain()
        return await self._respond(up, decision, fields, started, upgrade)

    async def _fast_upstream(
        self, host: str, port: int, tls: bool, decision: Decision
    ) -> FastUpstream:
        key = (host, port, tls)
        up = self.fast_upstreams.get(key)
        if up is not None and up.idle:
            return up
        if up is not None:
            up.stream.close()
            del self.fast_upstreams[key]
        rule = decision.rule
        address = await self.ctx.resolver.choose(host, port, rule)
        context = self.ctx.upstream_tls.get(rule.tls_ca if rule else None) if tls else None
        stream = await dial(address, host, port, tls=context, proxy=self.ctx.upstream_proxy)
        up = FastUpstream(stream)
        self.fast_upstreams[key] = up
        return up

    async def _forward_fast(
        self,
        req: h11.Request,
        decision: Decision,
        host: str,
        port: int,
        tls: bool,
        origin: str,
        headers: list[tuple[bytes, bytes]],
        fields: dict[str, Any],
        started: float,
    ) -> bool:
        """An ordinary exchange: request re-framed by hand, response parsed by llhttp."""
        up = await self._fast_upstream(host, port, tls, decision)
        up.start(req.method, origin.encode(), headers)
        while True:
            event = await self._client_event()
            if isinstance(event, h11.Data):
                up.body(bytes(event.data))
                await up.stream.drain()
            elif isinstance(event, h11.EndOfMessage):
                up.end()
                break
            else:
                raise BadRequest("request body ended early")
        await up.stream.drain()
        kind = "proxy.inspect" if decision.action == "inspect" else "proxy.allow"
        while True:
            item = await up.next_event(self.ctx.idle_timeout, self.client)
            if item[0] == "head":
                status = item[1]
                if status < 200:
                    continue  # interim responses (no Expect on this path): nothing to relay
                response_headers = _forward_headers(item[2], False)
                if any(n == b"transfer-encoding" for n, _ in response_headers):
                    response_headers = [
                        (n, v) for n, v in response_headers if n != b"content-length"
                    ]
                length = next((v for n, v in response_headers if n == b"content-length"), None)
                await self.ctx.audit.emit(
                    kind,
                    rule=decision.origin,
                    status=status,
                    bytes_in=int(length) if length is not None and length.isdigit() else None,
                    duration_ms=round((time.monotonic() - started) * 1000, 3),
                    **fields,
                )
                # llhttp validated names; values are checked for control bytes here so h11 can
                # skip its own (slower) pass.
                if any(_CONTROL.search(v) for _, v in response_headers) or _CONTROL.search(
                    item[3]
                ):
                    raise UpstreamError(502, "upstream sent control bytes in a header")
                try:
                    response = h11.Response(
                        status_code=status,
                        headers=response_headers,
                        reason=item[3],
                        http_version=b"1.1",
                        _parsed=True,
                    )
                except h11.LocalProtocolError as err:  # llhttp let through what h11 refuses
                    raise UpstreamError(502, f"upstream sent an invalid response: {err}") from None
                self._send(response)
            elif item[0] == "data":
                self._send(h11.Data(data=item[1]))
            else:
                self._send(h11.EndOfMessage())
                await self.client.drain()
                if not up.reusable():
                    up.stream.close()
                    self.fast_upstreams.pop((host, port, tls), None)
                return True

    async def _read_body(self, limit: int) -> list[bytes]:
        chunks, size = [], 0
        while True:
            event = await self._client_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise sigv4.SigV4Error(
                        f"body over {limit} bytes needs x-amz-content-sha256 from the client"
                    )
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return chunks
            else:
                raise BadRequest("request body ended early")

    async def _respond(
        self,
        up: _Upstream,
        decision: Decision,
        fields: dict[str, Any],
        started: float,
        upgrade: bool,
    ) -> bool:
        kind = "proxy.inspect" if decision.action == "inspect" else "proxy.allow"
        sent = 0
        status = 0
        while True:
            try:
                event = await up.next_event(self.ctx.idle_timeout, self.client)
            except h11.RemoteProtocolError as err:
                raise UpstreamError(502, f"upstream sent an invalid response: {err}") from None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101 and upgrade:
                    return await self._switch(up, event, decision, fields, kind)
                if event.status_code != 100:
                    self._send(
                        h11.InformationalResponse(
                            status_code=event.status_code,
                            headers=_forward_headers(event.headers, False),
                        )
                    )
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                # Audited before the agent sees a byte of the response (durable first).
                length = next((v for n, v in event.headers if n == b"content-length"), None)
                await self.ctx.audit.emit(
                    kind,
                    rule=decision.origin,
                    status=status,
                    bytes_in=int(length) if length is not None else None,
                    duration_ms=round((time.monotonic() - started) * 1000, 3),
                    **fields,
                )
                self._send(
                    h11.Response(
                        status_code=status,
                        headers=_forward_headers(event.headers, False),
                        reason=event.reason,
                        http_version=b"1.1",
                        _parsed=True,  # parsed by h11 from the upstream, hop-by-hop removed
                    )
                )
            elif isinstance(event, h11.Data):
                sent += len(event.data)
                self._send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._send(h11.EndOfMessage())
                await self.client.drain()
                return self._recycle(up)
            elif isinstance(event, h11.ConnectionClosed):
                if status == 0:
                    raise UpstreamError(502, "upstream closed the connection without answering")
                return False

    def _recycle(self, up: _Upstream) -> bool:
        if up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
            up.conn.start_next_cycle()
        else:
            up.stream.close()
            for key, value in list(self.upstreams.items()):
                if value is up:
                    del self.upstreams[key]
        return True

    async def _switch(
        self,
        up: _Upstream,
        event: h11.InformationalResponse,
        decision: Decision,
        fields: dict[str, Any],
        kind: str,
    ) -> bool:
        await self.ctx.audit.emit(
            kind, rule=decision.origin, status=101, reason="protocol upgrade", **fields
        )
        hop = (b"keep-alive", b"proxy-connection")
        headers = [(n, v) for n, v in event.headers if n not in hop]
        self._send(h11.InformationalResponse(status_code=101, headers=headers))
        await self.client.drain()
        client_rest = bytes(self.conn.trailing_data[0])
        upstream_rest = bytes(up.conn.trailing_data[0])
        for key, value in list(self.upstreams.items()):
            if value is up:
                del self.upstreams[key]
        if client_rest:
            up.stream.write(client_rest)
        if upstream_rest:
            self.client.write(upstream_rest)
        await up.stream.drain()
        await self.client.drain()
        await pipe(self.client, up.stream)
        up.stream.close()
        return False


class _Mismatch(Exception):
    pass


def _forward_headers(
    headers: list[tuple[bytes, bytes]] | Any, upgrade: bool
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
        if name in _HOP or name in named:
            continue
        out.append((name, value))
    return out
