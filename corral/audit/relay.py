"""Audit relay: lets a process that must not open the store (the proxy, after it drops to its
own uid) write to one sandbox's trail through a connected unix socket.

Protocol: each frame is a 4-byte big-endian length and a JSON object. Client -> relay:
``{"id": N, "type": "proxy.deny", "data": {...}}``; relay -> client, after the event committed:
``{"id": N, "seq": S}`` or ``{"id": N, "error": "..."}``. Acks come in request order.

Invariants:
- The relay is bound to one ``Trail``: the client cannot choose the sandbox, the actor or the
  sequence, only the event type (within ``allowed``) and a payload the registry validates.
- An ack is sent only after the event's group committed, so ``RemoteTrail.emit`` has the same
  durability as ``Trail.emit``. A dead relay or a failed store raises ``AuditUnavailable`` in
  the client, which must stop the action (the proxy stops egress).
- Frames are bounded (``MAX_FRAME``); a malformed frame closes the connection.
- The sandbox's audit budget (``corral.audit.budget``) applies here: repeats are held and
  written as one counted event at their window's end (and acknowledged only then), a flood
  writes one ``audit.flood`` event and is slowed, a sandbox past its bytes budget gets its
  events refused (error acks: the proxy fails closed). Distinct events are never folded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any, BinaryIO

from corral.audit.budget import HOLD, REFUSE, Budget, Held, from_env
from corral.audit.events import EventError, EventType, validate
from corral.audit.store import AuditUnavailable, Ticket, Trail

__all__ = ["PROXY_EVENTS", "AuditRelay", "RemoteTrail"]

MAX_FRAME = 256 * 1024
_LEN = struct.Struct(">I")

PROXY_EVENTS = frozenset(
    {
        EventType.PROXY_ALLOW,
        EventType.PROXY_DENY,
        EventType.PROXY_INSPECT,
        EventType.CREDENTIAL_INJECT,
        EventType.CREDENTIAL_SCRUB,
        EventType.DNS_QUERY,
        EventType.SANDBOX_LIMIT,  # the proxy's connection and buffer caps refusing
        EventType.ERROR,
    }
)


def _send(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(_frame(obj))


def _recv(rfile: BinaryIO) -> dict[str, Any] | None:
    head = rfile.read(4)
    if len(head) < 4:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"audit relay frame of {n} bytes exceeds {MAX_FRAME}")
    body = rfile.read(n)
    if len(body) < n:
        return None
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ValueError("audit relay frame is not an object")
    return obj


def _frame(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return _LEN.pack(len(data)) + data


class AuditRelay:
    """Serve ``sock`` (one end of a socketpair) for ``trail`` in one daemon thread.

    The thread reads whatever frames have arrived, queues them as one group, commits the group
    itself (no hand-off to the store's writer thread, no separate ack thread: an event costs
    one wake-up here) and answers them in one write. Frames arriving during a commit form the
    next group, so a busy proxy still gets group commits."""

    def __init__(
        self, trail: Trail, sock: socket.socket, allowed: Iterable[str] = PROXY_EVENTS,
        budget: Budget | None = None,
    ) -> None:
        self.trail, self.sock = trail, sock
        self.allowed = frozenset(str(t) for t in allowed)
        self.budget = budget if budget is not None else from_env(time.monotonic())
        self._thread = threading.Thread(target=self._serve, name="corral-audit-relay",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        buf = bytearray()
        budget = self.budget
        try:
            while True:
                deadline = budget.next_deadline()
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if select.select([self.sock], [], [], wait)[0]:
                    data = self.sock.recv(MAX_FRAME)
                    if not data:
                        break
                    buf += data
                now = time.monotonic()
                items = [self._accept(msg, now) for msg in _frames(buf)]
                self._commit_and_ack([i for i in items if i is not None], budget.due(now))
        except (OSError, ValueError):
            pass  # a broken or hostile peer: drop the connection
        finally:
            with contextlib.suppress(OSError, ValueError, AuditUnavailable):
                self._commit_and_ack([], budget.due(0.0, all_=True), final=True)
            self._close_sock()

    def _commit_and_ack(self, items: list[tuple[Any, Ticket | None, str | None]],
                        counted: list[Held], *, final: bool = False) -> None:
        """Write the counted events and the flood notices, commit once, answer everyone."""
        budget = self.budget
        now = time.monotonic()
        groups = []
        for held in counted:
            event = held.event()
            try:
                ticket: Ticket | None = self.trail.emit_held(held.type, **event)
                error = None
                budget.wrote(held.type, event, now)
            except (EventError, TypeError, AuditUnavailable) as err:
                ticket, error = None, f"unavailable: {err}"
            groups.append((held.tokens, ticket, error))
        end = budget.final() if final else None
        for notice in [*budget.notices, *([end] if end else [])]:
            with contextlib.suppress(EventError, TypeError):
                items.append((None, self.trail.emit_held(EventType.AUDIT_FLOOD, **notice), None))
        budget.notices.clear()
        if pause := budget.wait():
            time.sleep(pause)  # a flood: slow its acks, and so the proxy, to the budget's rate
        if any(t is not None for _, t, _ in items) or any(t is not None for _, t, _ in groups):
            self.trail.commit()
        frames = [self._ack_frame(item) for item in items if item[0] is not None]
        for tokens, ticket, error in groups:
            frames += [self._ack_frame((rid, ticket, error)) for rid in tokens]
        if frames:
            self.sock.sendall(b"".join(frames))

    def _accept(self, msg: dict[str, Any], now: float
                ) -> tuple[Any, Ticket | None, str | None] | None:
        """The event's ticket (or error); ``None`` when it is held for a counted event."""
        rid, type_, data = msg.get("id"), msg.get("type"), msg.get("data")
        if not isinstance(type_, str) or type_ not in self.allowed:
            return rid, None, f"event type {type_!r} not allowed here"
        if not isinstance(data, dict):
            return rid, None, "data must be an object"
        try:
            validate(type_, data)  # before the budget: a bad event is not counted
        except EventError as err:
            return rid, None, str(err)
        verdict = self.budget.offer(type_, data, now, rid)
        if verdict == HOLD:
            return None
        if verdict == REFUSE:
            return rid, None, "unavailable: the sandbox's audit budget is used up"
        try:
            ticket = self.trail.emit_held(type_, **data)
        except (EventError, TypeError) as err:
            return rid, None, str(err)
        except AuditUnavailable as err:
            return rid, None, f"unavailable: {err}"
        self.budget.wrote(type_, data, now)
        return rid, ticket, None

    @staticmethod
    def _ack_frame(item: tuple[Any, Ticket | None, str | None]) -> bytes:
        rid, ticket, error = item
        if ticket is not None:
            try:
                return _frame({"id": rid, "seq": ticket.wait()})
            except AuditUnavailable as err:
                error = f"unavailable: {err}"
        return _frame({"id": rid, "error": error})

    def _close_sock(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving (events already received are still committed and acknowledged)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)
        self._thread.join(timeout)


def _frames(buf: bytearray) -> list[dict[str, Any]]:
    """The complete frames at the start of ``buf``, removed from it (a partial one stays)."""
    out: list[dict[str, Any]] = []
    pos = 0
    while len(buf) - pos >= 4:
        (n,) = _LEN.unpack_from(buf, pos)
        if n > MAX_FRAME:
            raise ValueError(f"audit relay frame of {n} bytes exceeds {MAX_FRAME}")
        if len(buf) - pos - 4 < n:
            break
        obj = json.loads(bytes(buf[pos + 4 : pos + 4 + n]))
        if not isinstance(obj, dict):
            raise ValueError("audit relay frame is not an object")
        out.append(obj)
        pos += 4 + n
    del buf[:pos]
    return out


class RemoteTrail:
    """The client end: ``emit(type, **data) -> seq`` returns after the relay's commit ack.

    Thread-safe and pipelined: concurrent emitters share the relay's group commits.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._waiting: dict[int, list[Any]] = {}  # id -> [event, result, error]
        self._dead: str | None = None
        self._reader = threading.Thread(target=self._read, name="corral-audit-remote", daemon=True)
        self._reader.start()

    @classmethod
    def from_fd(cls, fd: int) -> RemoteTrail:
        return cls(socket.socket(fileno=fd))

    def emit(self, type_: str | EventType, /, **data: Any) -> int:
        slot: list[Any] = [threading.Event(), None, None]
        with self._lock:
            if self._dead is not None:
                raise AuditUnavailable(self._dead)
            rid = next(self._ids)
            self._waiting[rid] = slot
        try:
            with self._send_lock:
                _send(self.sock, {"id": rid, "type": str(type_), "data": data})
        except (OSError, TypeError, ValueError) as err:
            with self._lock:
                self._waiting.pop(rid, None)
            if isinstance(err, OSError):
                raise AuditUnavailable(f"audit relay unreachable: {err}") from None
            raise EventError(f"{type_}: payload is not JSON: {err}") from None
        slot[0].wait()
        if slot[2] is not None:
            if str(slot[2]).startswith("unavailable") or slot[2] == "relay gone":
                raise AuditUnavailable(f"audit relay: {slot[2]}")
            raise EventError(slot[2])
        return int(slot[1])

    def _read(self) -> None:
        reason = "relay gone"
        try:
            with self.sock.makefile("rb") as rfile:
                while (msg := _recv(rfile)) is not None:
                    with self._lock:
                        slot = self._waiting.pop(msg.get("id"), None)  # type: ignore[arg-type]
                    if slot is not None:
                        slot[1], slot[2] = msg.get("seq"), msg.get("error")
                        slot[0].set()
        except (OSError, ValueError):
            pass
        with self._lock:
            self._dead = reason
            waiting, self._waiting = self._waiting, {}
        for slot in waiting.values():
            slot[2] = reason
            slot[0].set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(5)
        self.sock.close()
