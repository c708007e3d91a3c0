"""The proxy's audit side: the sink protocol and its relay across the privilege boundary.

The proxy runs as its own unprivileged uid in a child process; the audit store is root-only in
the launcher. Events travel over a socketpair to ``corral.audit.AuditRelay`` (the one relay of
corral), bound in the launcher to this sandbox's trail and to the proxy's event types only; it
acknowledges an event only once its group committed (the event is durable).

Invariants:
- ``await emit(...)`` in the proxy returns only after the launcher acknowledged the event, so
  an action never completes before its record is durable. If the relay is gone, ``emit`` raises
  and the proxy fails closed (the connection is dropped, and the child exits).
- Fields are JSON-serialisable scalars; secrets never appear (bindings by name only).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any, Protocol

__all__ = ["AsyncAudit", "AuditSink", "DirectAudit", "NullAudit", "RelayAudit", "SinkTrail",
           "start_relay"]

_LEN = struct.Struct(">I")  # corral.audit.relay's frame header


class AuditSink(Protocol):
    def emit(self, event_type: str, /, **fields: Any) -> None: ...


class AsyncAudit:
    enabled = False

    async def emit(self, event_type: str, **fields: Any) -> None:
        return None


NullAudit = AsyncAudit


class DirectAudit(AsyncAudit):
    """Calls an in-process sink (same process as the proxy: tests, embedded use)."""

    enabled = True

    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink

    async def emit(self, event_type: str, **fields: Any) -> None:
        self.sink.emit(event_type, **fields)


class RelayAudit(AsyncAudit):
    """The proxy child's end of ``corral.audit.AuditRelay`` (the launcher holds the trail).

    Speaks the relay's frames (4-byte big-endian length + JSON; acks in request order) on the
    child's event loop, so an event costs no thread hop. ``emit`` returns once the relay acked
    the event's commit; an error ack or a closed relay raises ``ConnectionError``.
    """

    enabled = True

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.seq = 0
        self.writer: asyncio.StreamWriter | None = None
        self.closed = asyncio.Event()

    async def open(self) -> None:
        reader, self.writer = await asyncio.open_connection(sock=self.sock)
        asyncio.get_running_loop().create_task(self._acks(reader))

    async def _acks(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                (n,) = _LEN.unpack(head)
                msg = json.loads(await reader.readexactly(n))
                waiter = self.waiters.pop(int(msg.get("id", 0)), None)
                if waiter is None or waiter.done():
                    continue
                if msg.get("error") is not None:
                    waiter.set_exception(ConnectionError(f"audit: {msg['error']}"))
                else:
                    waiter.set_result(None)
        except (asyncio.IncompleteReadError, OSError, ValueError):
            pass
        finally:
            for waiter in self.waiters.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("audit relay closed"))
            self.closed.set()

    async def emit(self, event_type: str, **fields: Any) -> None:
        if self.writer is None or self.closed.is_set():
            raise ConnectionError("audit relay closed")
        self.seq += 1
        seq = self.seq
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[seq] = waiter
        data = {k: v for k, v in fields.items() if v is not None}
        body = json.dumps({"id": seq, "type": event_type, "data": data},
                          separators=(",", ":"), default=str).encode()
        self.writer.write(_LEN.pack(len(body)) + body)
        await waiter


class _Done:
    """A ticket already settled (the sink emitted synchronously)."""

    done = True

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def wait(self, timeout: float | None = None) -> int:
        return self.seq


class SinkTrail:
    """Lets ``AuditRelay`` serve a plain ``AuditSink`` (tests, embedded use) like a trail."""

    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink
        self.count = 0

    def emit_nowait(self, event_type: str, /, **fields: Any) -> _Done:
        from corral.audit import AuditUnavailable, EventError

        try:
            self.sink.emit(event_type, **fields)
        except (EventError, TypeError):
            raise
        except Exception as err:
            raise AuditUnavailable(f"audit sink failed: {err}") from None
        self.count += 1
        return _Done(self.count)

    emit_held = emit_nowait  # the sink has it the moment it returns: nothing to commit

    def commit(self) -> None:
        pass


def start_relay(sock: socket.socket, sink: Any) -> Any:
    """Launcher side: ``corral.audit.AuditRelay`` for ``sink`` (a trail, or a plain sink),
    accepting only the proxy's event types."""
    from corral.audit import AuditRelay
    from corral.audit.relay import PROXY_EVENTS

    trail: Any = sink if hasattr(sink, "emit_nowait") else SinkTrail(sink)
    return AuditRelay(trail, sock, allowed=PROXY_EVENTS)
