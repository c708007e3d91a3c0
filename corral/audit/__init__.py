"""The audit trail: every action, tamper-evident, queryable, never lost.

Public API (everything else in this package is internal)::

    from corral.audit import AuditStore, Actor, AuditUnavailable

    store = AuditStore.open()                 # state_dir()/audit.db, WAL, synchronous=NORMAL
    # AuditStore.open(path, synchronous="FULL"); raises CorralError (one clear line) if the store
    # cannot be written or its disk is (nearly) full: corral must not start the sandbox then.
    trail = store.trail(sandbox_id, actor=Actor.current())   # this sandbox's hash chain
    seq = trail.emit("proxy.deny", host="x.com", rule="a.yaml:3", method="GET", path="/")
    # emit() returns after the event's group commit: do the action *after* it returns.
    # It raises AuditUnavailable if the store failed: stop the action (the proxy stops egress).
    ticket = trail.emit_nowait("dns.query", name="x.com", rcode="NXDOMAIN"); ticket.wait()
    trail.close(status="exit 0")              # trail.close event + closing hash into the ledger
    store.close()

    # A process that must not open the store (the proxy after its uid drop):
    a, b = socket.socketpair()
    relay = AuditRelay(trail, a)              # launcher side, bound to this one trail
    remote = RemoteTrail(b)                   # or RemoteTrail.from_fd(fd) in the child
    remote.emit("proxy.allow", host=..., rule=...)   # returns after the relay's commit ack

    print(summary(sandbox_id))                # one-screen summary after `corral run`

Event types and their fields are registered in ``corral.audit.events`` (``EventType``,
``SCHEMAS``); an unknown type or field raises ``EventError``. ``credential.inject`` takes the
binding *name*; there is no field for a secret. Queries: ``corral.audit.query``; verification:
``corral.audit.verify``; CLI: ``corral audit ...``.
"""

from __future__ import annotations

from corral.audit.events import SCHEMAS, Actor, EventError, EventType
from corral.audit.relay import AuditRelay, RemoteTrail
from corral.audit.store import AuditStore, AuditUnavailable, Ticket, Trail
from corral.audit.summary import summary

__all__ = [
    "SCHEMAS",
    "Actor",
    "AuditRelay",
    "AuditStore",
    "AuditUnavailable",
    "EventError",
    "EventType",
    "RemoteTrail",
    "Ticket",
    "Trail",
    "summary",
]
