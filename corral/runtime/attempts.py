"""Network attempts of a sandbox without egress rules: refused as before, and now recorded.

A run with no egress rules has no proxy. Its netns still rejects every packet of the sandbox
user, but nothing would say that the agent tried: ``Attempts`` (the ``RunHooks`` of such a run)
adds the two records a proxy run has. DNS queries (UDP port 53 to any address, redirected by
the netns rules) reach a stub here that answers NXDOMAIN through the proxy's own answering
code (``corral.proxy.dns.answer`` with a policy that allows nothing) and records
``dns.query``; every other packet the rules reject is copied to an NFLOG group
(``corral.runtime.nflog``) and recorded as ``proxy.deny`` with ``mode: netfilter`` (rule
``default deny``, the address as the host), so ``corral audit`` and the run summary show it
where they show a proxy's denials.

Invariants:
- Nothing is let out: the stub never forwards a query and answers only NXDOMAIN (or FORMERR);
  the refusal of every other packet is the kernel's, whatever happens here.
- A query is answered only after its ``dns.query`` event is committed (audit before action);
  if the event cannot be written, the query is not answered.
- Records are bounded like a proxy's (``corral.audit.budget``: repeats within a second are
  counted, a flood is slowed, past the bytes budget nothing more is written): a looping agent
  cannot fill the disk. The kernel passes at most 100 refused packets a second to the group.
  The recorder reads at most ``BATCH`` datagrams a socket between looks at the budget's
  windows, so a flood faster than it reads still gets its counted events written (and its
  held queries answered) each window, not only once the flood stops.
- Start cost is two UDP sockets, one netlink socket and a thread; dnspython and the proxy's
  DNS code are imported at the first query, on the recorder's thread.
- ``finished`` reads what is still queued before it returns, so every attempt made before the
  command ended is in the trail before ``sandbox.exit``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from corral.runtime.egress import DNS_PORT

if TYPE_CHECKING:
    from corral.audit.budget import Budget
    from corral.sandbox.launch import Sandbox
    from corral.sandbox.spec import SandboxSpec

__all__ = ["LOG_GROUP", "Attempts"]

LOG_GROUP = 1  # the NFLOG group number is per netns: every sandbox can use the same one
_REASON = "no egress rules"
GRACE, GRACE_MAX = 0.008, 0.25  # seconds: see ``Attempts._late``
# Datagrams read per socket before the loop comes back to the budget's window ends: an agent
# that sends faster than they are read would otherwise keep ``_drain`` busy for as long as it
# floods, holding every folded query's answer (memory) and its counted event (the trail).
BATCH = 256

Emit = Callable[..., Any]  # Trail.emit(type, **fields): returns once the event is committed


def _sockets() -> list[socket.socket]:
    """DNS stub sockets (v4, v6) and the NFLOG socket; call inside the sandbox netns."""
    from corral.runtime import nflog

    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    socks = [udp4, udp6]
    try:
        udp4.bind(("127.0.0.1", DNS_PORT))
        udp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        udp6.bind(("::1", DNS_PORT))
        socks.append(nflog.bind(LOG_GROUP))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


class _NoRules:
    """The policy of a run without egress rules, for the proxy's DNS code: nothing resolves."""

    def decide_connect(self, host: str, port: int) -> Any:
        from corral.policy.types import Decision

        return Decision("deny", None, _REASON)


class Attempts:
    """``RunHooks`` for a run without egress rules: ``prepare`` the spec, then record."""

    def __init__(self, trail_for: Callable[[str], Any]) -> None:
        self._trail_for = trail_for
        self._socks: list[socket.socket] = []
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None
        self._emit: Emit | None = None
        self._budget: Budget | None = None
        self._dns_ctx: Any = None

    @staticmethod
    def prepare(spec: SandboxSpec) -> SandboxSpec:
        return spec._replace(dns_port=DNS_PORT, refusal_log=LOG_GROUP)

    # -- RunHooks -----------------------------------------------------------------------------

    def started(self, sb: Sandbox) -> Mapping[str, str]:
        self._emit = self._trail_for(sb.id).emit
        self._socks = sb.run_in_netns(_sockets)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="corral-attempts")
        self._thread.start()
        return {}

    def finished(self, sb: Sandbox) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=10)
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1
        for s in self._socks:
            s.close()
        self._socks = []

    # -- the recorder thread ------------------------------------------------------------------

    def _serve(self) -> None:
        from corral.audit.budget import Budget

        self._budget = Budget(now=time.monotonic())
        try:
            while True:
                deadline = self._budget.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([*self._socks, self._stop_r], [], [], timeout)
                stopping = self._stop_r in ready
                for sock in (s for s in self._socks if stopping or s in ready):
                    # stopping: the command has ended, so what is queued is finite
                    self._drain(sock, None if stopping else BATCH)
                if stopping:
                    self._late()
                self._flush(all_=stopping)
                if stopping:
                    return
        except Exception as err:  # the refusals stand; say that recording them stopped
            with contextlib.suppress(Exception):
                self._record("error", {"component": "attempts", "message": repr(err)[:200]})

    def _late(self) -> None:
        """The kernel hands a refused packet to the NFLOG group a few milliseconds after the
        sender saw the refusal (measured: up to ~7 ms on a loaded 2-core host), so a command
        that exits right after an attempt can end before it is readable: wait until the group
        has been quiet for ``GRACE`` (at most ``GRACE_MAX`` in all)."""
        nl = self._socks[-1]
        end = time.monotonic() + GRACE_MAX
        while (left := end - time.monotonic()) > 0:
            if not select.select([nl], [], [], min(GRACE, left))[0]:
                return
            self._drain(nl, None)

    def _drain(self, sock: socket.socket, batch: int | None) -> None:
        """Read what ``sock`` holds: all of it, or at most ``batch`` datagrams."""
        while batch is None or (batch := batch - 1) >= 0:
            try:
                data, addr = sock.recvfrom(65535, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # ENOBUFS: the kernel dropped some; keep reading
                self._record("error", {"component": "attempts",
                                       "message": f"refused packets lost: {err.strerror}"})
                continue
            if sock.family == socket.AF_NETLINK:
                self._refused(data)
            else:
                self._query(sock, data, addr)

    def _refused(self, data: bytes) -> None:
        from corral.runtime.nflog import parse

        for dest in parse(data):
            fields: dict[str, Any] = {"host": dest.address, "rule": "default deny",
                                      "mode": "netfilter", "reason": f"{_REASON} ({dest.protocol})"}
            if dest.port is not None:
                fields["port"] = dest.port
            self._offer("proxy.deny", fields, None)

    def _query(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        if self._dns_ctx is None:
            from types import SimpleNamespace

            self._dns_ctx = SimpleNamespace(policy=_NoRules(), names=None)
        from corral.proxy.dns import answer

        try:
            reply, fields = answer(self._dns_ctx, data)
        except Exception as err:  # fail closed: recorded, not answered
            reply, fields = None, {"name": "-", "rcode": "SERVFAIL", "answer": type(err).__name__}
        self._offer("dns.query", fields, (sock, addr, reply))

    # -- the budget ---------------------------------------------------------------------------

    def _offer(self, type_: str, fields: dict[str, Any], reply: Any) -> None:
        from corral.audit.budget import OWN

        assert self._budget is not None
        # HOLD: answered once its counted event is written (``_flush``); REFUSE: past the
        # bytes budget, not recorded and not answered
        verdict = self._budget.offer(type_, fields, time.monotonic(), reply)
        if verdict == OWN and self._record(type_, fields):
            self._answer(reply)

    def _flush(self, *, all_: bool = False) -> None:
        assert self._budget is not None
        for held in self._budget.due(time.monotonic(), all_=all_):
            if self._record(held.type, held.event()):
                for reply in held.tokens:
                    self._answer(reply)
        if all_ and (final := self._budget.final()) is not None:
            self._record("audit.flood", final)

    def _record(self, type_: str, fields: dict[str, Any]) -> bool:
        assert self._emit is not None
        budget = self._budget
        if budget is not None and (pause := budget.wait()):
            time.sleep(pause)  # flooding: slow the recorder, the agent's queries wait
        try:
            self._emit(type_, **fields)
        except Exception:
            return False  # not durable -> not answered
        if budget is not None:
            budget.wrote(type_, fields, time.monotonic())
            while budget.notices:
                with contextlib.suppress(Exception):
                    self._emit("audit.flood", **budget.notices.pop(0))
        return True

    @staticmethod
    def _answer(reply: Any) -> None:
        if reply is None:
            return
        sock, addr, wire = reply
        if wire is not None:
            with contextlib.suppress(OSError):
                sock.sendto(wire, addr)
