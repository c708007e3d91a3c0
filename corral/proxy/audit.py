"""The proxy's audit side: its end of the launcher's audit relay.

The proxy runs as its own unprivileged uid in a child process; the audit store is root-only in
the launcher. Events travel over a socketpair to ``corral.audit.AuditRelay`` (the one relay of
corral), bound in the launcher to this sandbox's trail and to the proxy's event types only; it
acknowledges an event only once its group committed (the event is durable), in the order the
events were sent. ``RelayAudit`` is the one client of that relay.

Invariants:
- ``await emit(...)`` returns only after the launcher acknowledged the event, so an action
  never completes before its record is durable. If the relay is gone or refused the event,
  ``emit`` raises ``ConnectionError`` and the proxy fails closed (the connection is dropped;
  the child exits when the relay closes).
- ``emit(..., first=[...])`` writes several events in one frame batch and waits for one ack
  window: they are committed in one group, in order, and ``emit`` returns once all are
  durable (the relay acks in order, so the last ack covers the batch).
- ``send(...)`` writes an event without waiting for its ack: only for a record whose action
  already has a durable record of its own (a response status after the request's
  ``credential.inject``). It is written when the event loop next turns (so the response it
  describes reaches the agent first; an ``emit`` before then carries it in its own write) and
  marked deferred: the relay commits it with the next awaited event, or within its ``DEFER``
  (2 ms) if none follows. It is still committed in order before any later event; an error ack
  for it makes every later ``emit`` and ``send`` raise (fail closed from then on).
- Fields are JSON-serialisable scalars; secrets never appear (bindings by name only).
- An awaited event whose fields are all strings (``credential.inject``, on the path of every
  injected request, repeats the same binding, host, header and rule) is encoded once: its
  frame is the cached encoding of the same type and the same (name, string) pairs with the new
  id in front, byte for byte what encoding it again would give (values of other types are
  never cached: ``1``, ``1.0`` and ``True`` are equal keys but different JSON).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

from corral._frames import ENCODER, HEADER, frame_json, load_object, split

__all__ = ["NullAudit", "RelayAudit"]

_ENCODE = ENCODER.encode

Event = tuple[str, dict[str, Any]]
MAX_ACK = 64 * 1024  # an ack is a few dozen bytes; anything larger is not from the relay
_CACHED = 256  # encoded events kept (a proxy's bindings x hosts x rules; cleared when full)


class NullAudit:
    """No audit trail (a proxy started without one): every emit is a no-op."""

    enabled = False

    async def emit(self, event_type: str, /, *, first: Sequence[Event] = (),
                   **fields: Any) -> None:
        return None

    def send(self, event_type: str, /, **fields: Any) -> None:
        return None


class RelayAudit(NullAudit):
    """Speaks the relay's frames on the proxy's event loop, so an event costs no thread hop.
    ``open()`` once the loop runs; ``closed`` is set when the relay goes away."""

    enabled = True

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.seq = 0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()
        self.failed: str | None = None  # an unawaited event was refused: fail closed
        self.unsent: list[bytes] = []  # ``send`` frames waiting for the loop's next turn
        self.encoded: dict[tuple[str, ...], bytes] = {}  # see the invariants: no id, no "{"

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_connection(lambda: _Acks(self), sock=self.sock)

    def _ack(self, msg: dict[str, Any]) -> None:
        waiter = self.waiters.pop(int(msg.get("id", 0)), None)
        error = msg.get("error")
        if waiter is None:  # an event ``send`` did not wait for
            if error is not None:
                self.failed = self.failed or f"audit: {error}"
        elif waiter.done():
            pass
        elif error is not None:
            waiter.set_exception(ConnectionError(f"audit: {error}"))
        else:
            waiter.set_result(None)

    def _lost(self) -> None:
        self.failed = self.failed or "audit relay closed"
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("audit relay closed"))
        self.waiters.clear()
        self.closed.set()

    def _frame(self, event_type: str, fields: dict[str, Any], defer: bool = False
               ) -> tuple[int, bytes]:
        self.seq += 1
        if not defer:
            key = [event_type]
            for name, value in fields.items():
                if type(value) is not str:
                    break
                key += (name, value)
            else:
                return self.seq, self._cached(tuple(key), event_type, fields)
        data = {k: v for k, v in fields.items() if v is not None}
        msg = {"id": self.seq, "type": event_type, "data": data}
        if defer:
            msg["defer"] = True
        return self.seq, frame_json(msg)

    def _cached(self, key: tuple[str, ...], event_type: str, fields: dict[str, Any]) -> bytes:
        rest = self.encoded.get(key)
        if rest is None:
            if len(self.encoded) >= _CACHED:
                self.encoded.clear()
            # the encoding of {"id": 0, ...} after its id: the same for every id
            whole = _ENCODE({"id": 0, "type": event_type, "data": fields})
            rest = self.encoded[key] = whole[len('{"id":0'):].encode()
        body = b'{"id":%d' % self.seq + rest
        return HEADER.pack(len(body)) + body

    def _writable(self) -> asyncio.Transport:
        if self.transport is None or self.closed.is_set():
            raise ConnectionError("audit relay closed")
        if self.failed is not None:
            raise ConnectionError(self.failed)
        return self.transport

    async def emit(self, event_type: str, /, *, first: Sequence[Event] = (),
                   **fields: Any) -> None:
        """Write ``first`` and this event in one batch; return once all are durable."""
        transport = self._writable()
        loop = asyncio.get_running_loop()
        frames, waiters = [], []
        for type_, data in [*first, (event_type, fields)]:
            seq, body = self._frame(type_, data)
            waiter: asyncio.Future[None] = loop.create_future()
            self.waiters[seq] = waiter
            frames.append(body)
            waiters.append(waiter)
        # one write, after any queued ``send``: the relay commits them as one group, in order
        transport.write(b"".join([*self.unsent, *frames]))
        self.unsent = []
        for waiter in waiters:  # acks come in order: the last one is usually all we wait for
            await waiter
        if self.failed is not None:  # a ``send`` before this one was refused (acks in order)
            raise ConnectionError(self.failed)

    def send(self, event_type: str, /, **fields: Any) -> None:
        """Queue the event for the loop's next turn: writing it wakes the relay, a cost the
        caller's next step (relaying a response to the agent) should not wait for."""
        self._writable()
        if not self.unsent:
            asyncio.get_running_loop().call_soon(self._flush)
        self.unsent.append(self._frame(event_type, fields, defer=True)[1])

    def _flush(self) -> None:
        frames, self.unsent = self.unsent, []
        if frames and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(frames))


class _Acks(asyncio.Protocol):
    """The relay's acks, handled as they arrive (no reader task between the socket and the
    waiting request: an ack costs one callback)."""

    def __init__(self, audit: RelayAudit) -> None:
        self.audit = audit
        self.buf = bytearray()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            for body in split(self.buf, MAX_ACK):
                self.audit._ack(load_object(body))
        except ValueError:  # a malformed ack: the relay is not to be trusted, stop
            assert self.transport is not None
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        self.audit._lost()
