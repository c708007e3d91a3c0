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
    # the other end: corral.proxy.audit.RelayAudit(b), on the proxy's event loop:
    # await audit.emit("proxy.allow", host=..., rule=...)  returns after the commit ack

    print(summary(sandbox_id))                # one-screen summary after `corral run`

Event types and their fields are registered in ``corral.audit.events`` (``EventType``,
``SCHEMAS``); an unknown type or field raises ``EventError`` (add fields there, with a type).
``credential.inject`` takes the binding *name*; there is no field for a secret.

    sandbox.create    uid gid command workspace mode policies
    sandbox.layer     layer* (network|workspace|home|tmp|limits|landlock|seccomp|...) ok detail
                      path ephemeral owner proxy_port dns_port memory pids cpu
    sandbox.limit     limit* (a limit *hit*: memory|pids|wall|idle) value detail
    sandbox.exit      status* signal reason timeout duration_ms
    sandbox.teardown  ok* detail leftovers errors
    policy.resolved   digest* sources*
    exec.start        argv* cwd pid via tty
    dns.query         name* rcode* qtype answer
    proxy.allow|deny|inspect  host* rule* port method path status bytes_in bytes_out
                      duration_ms reason mode client
    credential.inject binding* host* header rule
    credential.scrub  binding* host* count* where* (header|body)
    llm.usage         host* rule* api* model* input_tokens* output_tokens* cache_write_tokens*
                      cache_read_tokens* cost_usd* complete* reserved_usd flagged known_model
                      status request_id path
    tool.call         tool* args ok duration_ms principal detail
    approval.request  request_id* tool summary reason args_digest policy_digest
    approval.decide   request_id* decision* by tool reason always
    approval.use      request_id* tool
    approval.revoke   standing* by* tool summary workspace
    error             component* message*
    (* required; trail.close is written by Trail.close())

Wiring notes: the sandbox harness emits these types itself (``corral.sandbox.launch``), one
``sandbox.layer`` per layer; ``corral.runtime.audit.LaunchAudit`` adds the run's mode and command.
``Trail.emit`` returns the seq (an int), so a ``Protocol`` declaring ``-> None`` needs a
one-line adapter. The relay socket goes to the proxy only, never into the sandbox. A trail left
open by a killed launcher is closed later with ``store.trail(id).close(status="crashed")``.

Queries: ``corral.audit.query``; verification: ``corral.audit.verify``; CLI: ``corral audit``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.audit import events, export, query, verify
    from corral.audit.events import SCHEMAS, Actor, EventError, EventType
    from corral.audit.relay import PROXY_EVENTS, AuditRelay
    from corral.audit.store import AuditStore, AuditUnavailable, Ticket, Trail

# ``summary`` is bound eagerly: it shares its name with its submodule, which importing would
# otherwise leave in its place. (It is light: sqlite3 and the query helpers.)
from corral.audit.summary import summary

# Other submodules load on first use: ``corral run`` needs the store, not the relay or the summary,
# before its command starts.
__getattr__ = lazy_exports("corral.audit", {
    "SCHEMAS": "events", "Actor": "events", "EventError": "events", "EventType": "events",
    "AuditRelay": "relay", "PROXY_EVENTS": "relay", "AuditStore": "store",
    "AuditUnavailable": "store", "Ticket": "store", "Trail": "store",
})


# ``events`` (the registry and the chain's hashing, which the control plane re-checks),
# ``export``, ``query``, ``verify`` and ``budget`` (the refusal budget, which the launcher's
# recorder of a run without egress rules applies too) are public submodules: their own
# ``__all__`` is part of this package's surface (``from corral.audit.query import iter_events``).
__all__ = [
    "PROXY_EVENTS",
    "SCHEMAS",
    "Actor",
    "AuditRelay",
    "AuditStore",
    "AuditUnavailable",
    "EventError",
    "EventType",
    "Ticket",
    "Trail",
    "budget",
    "events",
    "export",
    "query",
    "summary",
    "verify",
]
