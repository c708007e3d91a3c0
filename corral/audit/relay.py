"""Audit relay: lets a process that must not open the store (the proxy, after it drops to its
own uid) write to one sandbox's trail through a connected unix socket.

Protocol: each frame is a 4-byte big-endian length and a JSON object. Client -> relay:
``{"id": N, "type": "proxy.deny", "data": {...}}`` (with ``"defer": true`` for an event nobody
waits on); relay -> client, after the event committed: ``{"id": N, "seq": S}`` or
``{"id": N, "error": "..."}``. Acks come in request order.

Invariants:
- The relay is bound to one ``Trail``: the client cannot choose the sandbox, the actor or the
  sequence, only the event type (within ``allowed``) and a payload the registry validates.
- An ack is sent only after the event's group committed, so the client's awaited emit
  (``corral.proxy.audit.RelayAudit``, the one client) has the same durability as
  ``Trail.emit``. A dead relay or a failed store is an error in the client, which must stop
  the action (the proxy stops egress).
- Frames are handled in arrival order and acknowledged in that order: an ack for one event
  means every event sent before it on the socket was committed (or refused) too.
- A deferred event (the proxy's ``send``: a response's record, whose request already has a
  durable record) is queued in order but does not start a commit of its own: it is committed
  with the next event that is not deferred, at the latest ``DEFER`` after it arrived, or when
  the connection ends. Any other event, and any refusal, commits and answers at once, so
  deferral never delays an awaited event or a failure the client must see.
- Frames (``corral._frames``) are bounded (``MAX_FRAME``); a malformed frame closes the
  connection.
- The sandbox's audit budget (``corral.audit.budget``) applies here: repeats are held and
  written as one counted event at their window's end (and acknowledged only then), a flood
  writes one ``audit.flood`` event and is slowed, a sandbox past its bytes budget gets its
  events refused (error acks: the proxy fails closed). Distinct events are never folded.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from corral._frames import frame, frame_json, load_object, split
from corral.audit.budget import HOLD, REFUSE, Budget, Held, from_env
from corral.audit.events import EventError, EventType, validate
from corral.audit.relay_sink import sink_for
from corral.audit.store import AuditUnavailable, Trail

__all__ = ["MAX_FRAME", "PROXY_EVENTS", "AuditRelay"]

MAX_FRAME = 256 * 1024
_RECV = 64 * 1024  # bytes read at once (a frame may span several reads)
DEFER = 0.002  # seconds a deferred event may wait for the next commit (see the invariants)

PROXY_EVENTS = frozenset(
    {
        EventType.PROXY_ALLOW,
        EventType.PROXY_DENY,
        EventType.PROXY_INSPECT,
        EventType.CREDENTIAL_INJECT,
        EventType.CREDENTIAL_SCRUB,
        EventType.LLM_USAGE,
        EventType.DNS_QUERY,
        EventType.SANDBOX_LIMIT,  # the proxy's connection and buffer caps refusing
        EventType.ERROR,
    }
)


class AuditRelay:
    """Serve ``sock`` (one end of a socketpair) for ``trail`` in one daemon thread.

    The thread reads whatever frames have arrived, queues them as one group, commits the group
    itself (no hand-off to the store's writer thread, no separate ack thread: an event costs
    one wake-up here) and answers them in one write. Frames arriving during a commit form the
    next group, so a busy proxy still gets group commits. Deferred frames wait for the next
    group (a commit, ~40 us of the launcher's CPU on the path of every request, is saved for
    each response record)."""

    def __init__(
        self, trail: Trail | Any, sock: socket.socket, allowed: Iterable[str] = PROXY_EVENTS,
        budget: Budget | None = None,
    ) -> None:
        """``trail``: a ``Trail``, or any sink with ``emit(type, **fields)`` (tests, embedded
        use: it has the event once ``emit`` returns)."""
        self.trail: Trail | Any = trail
        # a store's own trail takes the validated events as rows; a wrapper (the CLI's
        # denial printer, tests) sees every event through its emit_held
        self.sink = sink_for(trail)
        self.sock = sock
        self.allowed = frozenset(str(t) for t in allowed)
        self.budget = budget if budget is not None else from_env(time.monotonic())
        self._thread = threading.Thread(target=self._serve, name="corral-audit-relay",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        buf = bytearray()
        # recv into one reused buffer: a fresh MAX_FRAME-sized bytes per recv is an mmap and a
        # munmap (TLB shootdowns across this process's threads) on every event
        chunk = memoryview(bytearray(_RECV))
        budget = self.budget
        deferred: list[tuple[Any, Any, str | None]] = []  # queued, not committed
        flush_at: float | None = None  # when the deferred events are committed at the latest
        poller = select.poll()  # registered once: select.select builds its fd sets every call
        poller.register(self.sock, select.POLLIN)
        try:
            while True:
                deadline = budget.next_deadline() if budget.held else None
                if flush_at is not None and (deadline is None or flush_at < deadline):
                    deadline = flush_at
                wait = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1e3
                if poller.poll(wait):
                    n = self.sock.recv_into(chunk)
                    if not n:
                        break
                    buf += chunk[:n]
                now = time.monotonic()
                urgent = False
                for body in split(buf, MAX_FRAME):
                    msg = load_object(body)
                    item = self._accept(msg, now)
                    if item is not None:
                        deferred.append(item)
                    # an awaited event, or a refusal the client must learn of, ends the wait
                    urgent = urgent or msg.get("defer") is not True or (
                        item is not None and item[2] is not None)
                counted = budget.due(now)
                if urgent or counted or (flush_at is not None and now >= flush_at):
                    items, deferred, flush_at = deferred, [], None
                    self._commit_and_ack(items, counted)
                elif deferred and flush_at is None:
                    flush_at = now + DEFER
        except (OSError, ValueError):
            pass  # a broken or hostile peer: drop the connection
        finally:
            with contextlib.suppress(OSError, ValueError, AuditUnavailable):
                self._commit_and_ack(deferred, budget.due(0.0, all_=True), final=True)
            self._close_sock()

    def _commit_and_ack(self, items: list[tuple[Any, Any, str | None]],
                        counted: list[Held], *, final: bool = False) -> None:
        """Write the counted events and the flood notices, commit once, answer everyone."""
        budget, sink = self.budget, self.sink
        groups = []
        if counted or budget.notices or final:
            now = time.monotonic()
            for held in counted:
                event = held.event()
                try:
                    token: Any = sink.add_checked(held.type, event)
                    error = None
                    budget.wrote(held.type, event, now)
                except (EventError, TypeError, AuditUnavailable) as err:
                    token, error = None, f"unavailable: {err}"
                groups.append((held.tokens, token, error))
            end = budget.final() if final else None
            for notice in [*budget.notices, *([end] if end else [])]:
                with contextlib.suppress(EventError, TypeError):
                    items.append((None, sink.add_checked(EventType.AUDIT_FLOOD, notice), None))
            budget.notices.clear()
        if pause := budget.wait():
            time.sleep(pause)  # a flood: slow its acks, and so the proxy, to the budget's rate
        if any(t is not None for _, t, _ in items) or any(t is not None for _, t, _ in groups):
            sink.commit()
        frames = [self._ack_frame(item) for item in items if item[0] is not None]
        for tokens, token, error in groups:
            frames += [self._ack_frame((rid, token, error)) for rid in tokens]
        if frames:
            self.sock.sendall(b"".join(frames))

    def _accept(self, msg: dict[str, Any], now: float) -> tuple[Any, Any, str | None] | None:
        """The event's token in the sink (or error); ``None`` when it is held for a counted
        event."""
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
            token, size = self.sink.add(type_, data)
        except (EventError, TypeError) as err:
            return rid, None, str(err)
        except AuditUnavailable as err:
            return rid, None, f"unavailable: {err}"
        self.budget.wrote(type_, data, now, size=size)
        return rid, token, None

    def _ack_frame(self, item: tuple[Any, Any, str | None]) -> bytes:
        rid, token, error = item
        if token is not None:
            try:
                seq = self.sink.seq(token)
            except AuditUnavailable as err:
                error = f"unavailable: {err}"
            else:
                if type(rid) is int:  # the client's ids: skip the JSON encoder on the hot path
                    return frame(b'{"id":%d,"seq":%d}' % (rid, seq))
                return frame_json({"id": rid, "seq": seq})
        return frame_json({"id": rid, "error": error})

    def _close_sock(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving (events already received are still committed and acknowledged)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)
        self._thread.join(timeout)

