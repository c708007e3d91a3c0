"""In-process harness for the proxy's module tests (decide, dns, forward, respond).

Real loopback sockets on both sides: the agent is the far end of a connected socket pair
whose near end the proxy code reads and writes through ``RawStream``; the upstream is a real
TCP listener on 127.0.0.1 that records what it receives and answers with scripted raw bytes.
``Recorder`` is the audit side: it records each event and, at the moment it is emitted,
whether the agent could already read a byte (``MSG_PEEK`` on the agent's socket), so
"audited before the agent sees the response" is checked on the wire, not assumed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11

from corral.policy.types import CredentialBinding, Decision, Origin, Rule
from corral.proxy.agent import AgentConnection
from corral.proxy.audit import NullAudit
from corral.proxy.context import ProxyContext
from corral.proxy.lookup import Resolver
from corral.proxy.streams import RawStream

ORIGIN = Origin("p.yaml", 4)


def rule(host: str = "up.test", action: str = "inspect", credential: str | None = None,
         **extra: Any) -> Rule:
    return Rule(host, frozenset({80, 443}), action, ORIGIN, "p", credential=credential,  # type: ignore[arg-type]
                allow_private=True, **extra)


def allow(action: str = "inspect", credential: str | None = None) -> Decision:
    return Decision(action, rule(action=action, credential=credential), "")  # type: ignore[arg-type]


class Policy:
    """A policy with fixed answers; ``credentials_for`` returns ``binding``."""

    def __init__(self, connect: Callable[[str, int], Decision] | None = None,
                 binding: CredentialBinding | None = None) -> None:
        self._connect = connect or (lambda host, port: Decision("deny", None, "no"))
        self.binding = binding

    def decide_connect(self, host: str, port: int) -> Decision:
        return self._connect(host, port)

    def decide_request(self, host: str, port: int, method: str, path: str) -> Decision:
        return self._connect(host, port)

    def credentials_for(self, decision: Decision) -> CredentialBinding | None:
        return self.binding


@dataclass
class Recorder(NullAudit):
    """Records events; ``agent_had_bytes[i]`` is whether the agent could read before event i."""

    agent: socket.socket | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    agent_had_bytes: list[bool] = field(default_factory=list)
    fail: bool = False

    def _peek(self) -> bool:
        if self.agent is None:
            return False
        try:
            return bool(self.agent.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False

    async def emit(self, event_type: str, /, *, first: Sequence[tuple[str, dict[str, Any]]] = (),
                   **fields: Any) -> None:
        if self.fail:
            raise OSError("audit relay gone")
        self.agent_had_bytes.append(self._peek())
        self.events.append((event_type, fields))

    def send(self, event_type: str, /, **fields: Any) -> None:
        self.agent_had_bytes.append(self._peek())
        self.events.append((event_type, fields))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


class Upstream:
    """A loopback TCP server answering each request with ``reply`` (raw bytes) once h11 has
    read all of it; records each request's head as sent and its decoded body."""

    def __init__(self, reply: bytes, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.received: list[bytes] = []  # request heads as sent
        self.heads: list[h11.Request] = []
        self.bodies: list[bytes] = []  # decoded bodies
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        """h11 reads each request (any framing); the scripted reply goes back raw."""
        with conn:
            parser, raw, body = h11.Connection(h11.SERVER), b"", b""
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = conn.recv(65536)
                    raw += data
                    parser.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    self.heads.append(event)
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self.received.append(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
                    self.bodies.append(body)
                    conn.sendall(self.reply)
                    if self.close_after:
                        return
                    rest = parser.trailing_data[0]
                    parser, raw, body = h11.Connection(h11.SERVER), bytes(rest), b""
                    if raw:  # (receiving b"" would mean EOF)
                        parser.receive_data(raw)
                else:  # ConnectionClosed or a protocol error's aftermath
                    return

    def close(self) -> None:
        self.sock.close()


async def agent_connection(ctx: ProxyContext, request: bytes
                           ) -> tuple[AgentConnection, socket.socket]:
    """An ``AgentConnection`` over a real socket pair; ``request`` is already sent by the agent."""
    near, far = socket.socketpair()
    far.sendall(request)
    reader, writer = await asyncio.open_connection(sock=near)
    return AgentConnection(ctx, RawStream(reader, writer)), far


def context(policy: Any, upstream_port: int | None = None,
            secrets: dict[str, dict[str, str]] | None = None) -> ProxyContext:
    ctx = ProxyContext(policy=policy, ca=None, secrets=secrets or {},  # type: ignore[arg-type]
                       resolver=Resolver({"up.test": ["127.0.0.1"]}), idle_timeout=5.0)
    return ctx


def read_response(far: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the agent received until the proxy side closed or went quiet."""
    far.settimeout(timeout)
    out = b""
    try:
        while data := far.recv(65536):
            out += data
    except TimeoutError:
        pass
    return out


@dataclass
class Result:
    oks: list[bool]  # forward's answer per request: the agent connection may go on
    error: Exception | None  # what forward raised (http1 turns it into a local answer)
    response: bytes  # what the agent received
    up: Upstream
    audit: Recorder
    upstream_had: list[int]  # requests the upstream had received when each event was emitted
    pooled: int  # upstream connections still pooled after the last exchange

    @property
    def ok(self) -> bool:
        return self.error is None and all(self.oks)

    @property
    def received(self) -> list[bytes]:
        return self.up.received


def run_forward(request: bytes, reply: bytes, decision: Decision | None = None,
                binding: CredentialBinding | None = None, path: str = "/p",
                secrets: dict[str, dict[str, str]] | None = None, requests: int = 1,
                close_after: bool = False) -> Result:
    """Send ``request`` (``requests`` of them back to back) from a real agent socket through
    ``forward`` to a real loopback upstream answering ``reply`` to each."""
    from corral.proxy.forward import forward  # the module under test, imported late
    from corral.proxy.request_head import Target
    from corral.proxy.upstream_pool import Upstreams

    up = Upstream(reply, close_after=close_after)
    upstream_had: list[int] = []

    class Noting(Recorder):
        def _peek(self) -> bool:
            upstream_had.append(len(up.received))
            return super()._peek()

    async def go() -> tuple[list[bool], Exception | None, bytes, Recorder, int]:
        ctx = context(Policy(binding=binding), secrets=secrets)
        agent, far = await agent_connection(ctx, request * requests)
        ctx.audit = audit = Noting(agent=far)
        upstreams = Upstreams(ctx)
        oks: list[bool] = []
        error: Exception | None = None
        try:
            for _ in range(requests):
                req = await agent.next_request()
                assert req is not None
                fields = {"method": req.method.decode(), "host": "up.test", "path": path}
                oks.append(await forward(agent, upstreams, req, decision or allow(),
                                         Target("up.test", up.port, False, path), fields,
                                         time.monotonic()))
                agent.start_next_cycle()
        except Exception as err:
            error = err
        pooled = len(upstreams.fast._open) + len(upstreams.h11._open)
        upstreams.close()
        agent.client.close()
        return oks, error, await asyncio.to_thread(read_response, far), audit, pooled

    try:
        oks, error, response, audit, pooled = asyncio.run(go())
    finally:
        up.close()
    return Result(oks, error, response, up, audit, upstream_had, pooled)
