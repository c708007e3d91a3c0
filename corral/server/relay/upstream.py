"""The relay's side towards the upstream: which address it may dial, and the connections.

Invariants:
- Addresses are judged by the proxy's own deny list (``corral.proxy.destinations``), without
  its two exceptions: an IP-literal host and a rule's ``allow_private`` open nothing here.
  Only a CIDR of the server config's ``relay.allow_private`` lets a private address through,
  so a project policy cannot make the relay reach the server's loopback, its database's
  network or a metadata address.
- The relay dials exactly the address it checked (no second lookup), verifies TLS for the
  policy host name (system store plus the rule's inline ``tls_ca``), and reuses a connection
  only for the same (address, port, host, TLS) after an exchange h11 says is complete.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Sequence
from typing import Any

import h11

from corral.proxy.destinations import blocked_reason
from corral.proxy.lookup import Refused, Resolver
from corral.proxy.upstream import UpstreamError, dial

__all__ = ["Connection", "Destinations", "Pool", "tls_context"]

_contexts: dict[str | None, ssl.SSLContext] = {}


def tls_context(pem: str | None) -> ssl.SSLContext:
    """A client context for an upstream: the system store, plus ``pem`` when the rule gives
    its own CA (inline PEM on the server, never a path)."""
    ctx = _contexts.get(pem)
    if ctx is None:
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(["http/1.1"])
        if pem is not None:
            ctx.load_verify_locations(cadata=pem)
        _contexts[pem] = ctx
    return ctx


class Destinations:
    def __init__(self, allow_private: Sequence[str]) -> None:
        self.nets = [ipaddress.ip_network(c, strict=False) for c in allow_private]
        self.resolver = Resolver()

    async def choose(self, host: str, port: int) -> str:
        """The first address of ``host`` the relay may dial, or ``Refused`` saying why."""
        reasons = []
        for addr in await self.resolver.lookup(host, port):
            ip = ipaddress.ip_address(addr)
            why = blocked_reason(ip)
            if why is None or any(ip.version == n.version and ip in n for n in self.nets):
                return addr
            reasons.append(why)
        if not reasons:
            raise Refused(f"{host} has no addresses")
        raise Refused(f"{host} resolves only to private addresses ({'; '.join(reasons)}); "
                      "the server's relay reaches a private address only inside its config's "
                      "relay.allow_private ranges")


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 key: tuple[object, ...]) -> None:
        self.reader, self.writer, self.key = reader, writer, key
        self.conn = h11.Connection(h11.CLIENT)

    def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)

    async def next_event(self, timeout: float) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(256 * 1024)
            except TimeoutError:
                raise UpstreamError(504, "upstream did not answer in time") from None
            self.conn.receive_data(data)

    def close(self) -> None:
        self.writer.close()


class Pool:
    def __init__(self, limit: int = 64) -> None:
        self._idle: dict[tuple[object, ...], list[Connection]] = {}
        self.limit = limit

    async def get(self, address: str, host: str, port: int, tls: ssl.SSLContext | None
                  ) -> Connection:
        key = (address, port, host, id(tls) if tls is not None else None)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn
            conn.close()
        stream = await dial(address, host, port, tls=tls)
        return Connection(stream.reader, stream.writer, key)

    def put(self, conn: Connection) -> None:
        if conn.conn.our_state is h11.DONE and conn.conn.their_state is h11.DONE:
            conn.conn.start_next_cycle()
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < self.limit:
                idle.append(conn)
                return
        conn.close()
