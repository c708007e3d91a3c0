"""The proxy's audit side: the sink protocol and its relay across the privilege boundary.

The proxy runs as its own unprivileged uid in a child process; the audit store is root-only in
the launcher. Events travel over a socketpair as JSON lines; the launcher's relay thread hands
each to the real sink and acknowledges only after ``sink.emit`` returned (the event is durable).

Invariants:
- ``await emit(...)`` in the proxy returns only after the launcher acknowledged the event, so
  an action never completes before its record is durable. If the relay is gone, ``emit`` raises
  and the proxy fails closed (the connection is dropped, and the child exits).
- Fields are JSON-serialisable scalars; secrets never appear (bindings by name only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

__all__ = ["AsyncAudit", "AuditSink", "DirectAudit", "NullAudit", "RelayAudit", "start_relay"]


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
    """The proxy child's end of the relay."""

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
            while line := await reader.readline():
                seq = int(line)
                waiter = self.waiters.pop(abs(seq), None)
                if waiter is None or waiter.done():
                    continue
                if seq < 0:
                    waiter.set_exception(ConnectionError("the audit sink failed"))
                else:
                    waiter.set_result(None)
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
        line = json.dumps({"seq": seq, "type": event_type, "fields": fields}, default=str)
        self.writer.write(line.encode() + b"\n")
        await waiter


def start_relay(sock: socket.socket, sink: AuditSink) -> threading.Thread:
    """Launcher side: emit each event into ``sink``, ack it once emit returned."""
    lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="corral-audit-relay")

    def handle(record: dict[str, Any]) -> None:
        seq = int(record["seq"])
        try:
            sink.emit(record["type"], **record["fields"])
        except Exception:
            seq = -seq  # the proxy fails the action closed
        with lock, contextlib.suppress(OSError):
            sock.sendall(b"%d\n" % seq)

    def run() -> None:
        buf = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line:
                        pool.submit(handle, json.loads(line))
        except OSError:
            pass
        finally:
            pool.shutdown(wait=True)

    thread = threading.Thread(target=run, name="corral-audit-relay", daemon=True)
    thread.start()
    return thread
