"""What the relay may do for one request: the run's token, its policy, the credential.

``grant`` runs on the event loop when SQLite's writer slot is free, in a worker thread
otherwise (``app.RelayMiddleware._grant``), and either returns a ``Grant`` or
raises ``RelayRefused`` with the status, code and message the launcher passes on. Its
database work is ``reads`` (two short statements and one commit on one connection, no ORM
objects): a live token takes that path; anything else is refused through ``tokens.find``.

Invariants:
- Only a live sandbox token of *this* run (kind ``sandbox``, audience ``SANDBOX_AUDIENCE``,
  ``run_id`` equal to the path's run) is accepted, and only while the run is running; every
  refused token is recorded (``auth.refused``) like the API's.
- The request is decided again, in full (host, port, method, target with its readings, and
  every method-override header), against the project's policy *now*; that policy's digest must
  be the digest the run registered. A policy pushed or detached since (the registered one was
  revoked) refuses every further request of the run: no request is relayed under a policy the
  run did not register.
- Only a ``platform`` decision is relayed; its credential must be a ``server:NAME`` binding,
  whose value is opened with the KEK in memory for this request only and never logged, stored
  or returned. The injection is recorded by binding name (``credential.inject``, actor the
  run's human) and committed before the request leaves for the upstream.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from corral.policy.resolved import ResolvedPolicy
from corral.policy.types import BudgetEntry, CredentialBinding, Decision
from corral.proxy import decide, override
from corral.proxy.relay_wire import Preamble
from corral.server.admin_log import record_now
from corral.server.crypto import KekError, load_kek
from corral.server.db import Database
from corral.server.models import Project, Run
from corral.server.relay import reads
from corral.server.tokens import SANDBOX_AUDIENCE, TokenRefused, find

__all__ = ["Grant", "RelayRefused", "grant"]


class RelayRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Grant:
    run: str
    project: str
    decision: Decision
    binding: CredentialBinding | None
    secret: str | None  # the credential's value, for this request only
    budgets: tuple[BudgetEntry, ...] = ()  # the policy's ``budgets:`` (for a metered rule)


_policies: dict[tuple[int, ...], ResolvedPolicy] = {}
_lock = threading.Lock()


def _policy(conn: Connection, key: tuple[int, ...]) -> ResolvedPolicy:
    """The project's composed policy, cached by the attached versions (immutable rows): which
    versions are attached is read on every request (with the token), so a push is seen by the
    next one."""
    with _lock:
        found = _policies.get(key)
    if found is None:
        from corral.policy.compose import compose
        from corral.policy.load import load_policy_text

        found = compose([load_policy_text(f, t) for f, t in reads.version_texts(conn, key)])
        with _lock:
            if len(_policies) > 256:
                _policies.clear()
            _policies[key] = found
    return found


def _decide(policy: ResolvedPolicy, pre: Preamble) -> Decision:
    decision = decide.request(policy, pre.host, pre.port, pre.method, pre.target)
    if decision.action != "deny":
        try:
            decision = override.decide_overrides(policy, pre.host, pre.port, pre.method,
                                                 pre.target, pre.headers, decision)
        except Exception as err:  # a malformed override header: refused, never relayed
            return Decision("deny", None, str(err), 400)
    return decision


def _refused(db: Database, run_id: str, secret: str, client: str) -> reads.Who:
    """Why the token or the run is refused, through ``tokens.find`` and the rows themselves
    (the exact reason, and ``auth.refused`` recorded). A state that changed in between and
    passes every check is returned: it was checked in full, here."""
    with db.session() as session:
        try:
            token = find(session, secret)
            if token.kind != "sandbox" or token.audience != SANDBOX_AUDIENCE:
                raise TokenRefused("only a run's sandbox token may use the relay", token)
            if token.run_id != run_id:
                raise TokenRefused(f"this token belongs to run {token.run_id}, not {run_id}",
                                   token)
        except TokenRefused as err:
            session.rollback()
            record_now(db, "anonymous", "auth.refused", f"POST /relay/v1/{run_id}",
                       reason=str(err), client=client,
                       token_id=err.token.id if err.token else None)
            raise RelayRefused(401, "unauthorized", str(err)) from None
        run = session.get(Run, run_id)
        if run is None or run.status != "running":
            raise RelayRefused(403, "run_ended", f"run {run_id} is not running")
        project = session.get(Project, run.project_id)
        assert project is not None
        return reads.Who(run_id, run.human, run.policy_digest, project.id, project.name,
                         project.team_id)


def grant(db: Database, kek_path: Any, run_id: str, secret: str, pre: Preamble,
          client: str, *, writer: AbstractContextManager[object] | None = None) -> Grant:
    """``writer``: held around the inject record's write (default ``db.writer()``; a caller
    that already holds the writer slot passes a null context)."""
    with db.engine.connect() as conn:
        row, versions = reads.token_row(conn, secret)
        who = reads.live(row, run_id)
        if who is None:
            conn.rollback()
            who = _refused(db, run_id, secret, client)
            versions = reads.token_row(conn, secret)[1]  # checked in full: read them again
        policy = _policy(conn, versions)
        if policy.digest != who.digest:
            raise RelayRefused(403, "policy_revoked", (
                f"run {run_id} registered policy {who.digest[:12]}, which project "
                f"{who.project} no longer has (now {policy.digest[:12]}): it was replaced or "
                "removed; start a new run to use the current policy"))
        decision = _decide(policy, pre)
        where = f"{pre.method} {pre.host}:{pre.port}{pre.target}"
        if decision.action != "platform":
            text = decision.message if decision.action == "deny" else (
                f"the run's policy says {decision.action} ({decision.origin}), not platform")
            raise RelayRefused(403, "policy_refused", f"{where}: {text}")
        binding = policy.credentials.get(decision.credential or "")
        if binding is None:
            return Grant(run_id, who.project, decision, None, None, policy.budgets)
        name = (binding.secret or "").removeprefix("server:")
        found = reads.credential(conn, who.project_id, name)
        if found is None:
            raise RelayRefused(403, "no_credential", (
                f"project {who.project} has no credential {name!r} (binding {binding.name} at "
                f"{binding.origin}); set it with 'corral creds set {name} --project "
                f"{who.project}'"))
        try:
            value = load_kek(kek_path).open(who.project_id, name, found.sealed)
        except KekError as err:
            raise RelayRefused(500, "credential_unreadable", str(err)) from None
        with writer if writer is not None else db.writer():
            reads.record_inject(conn, who, found, f"{who.project}/{name}",
                                binding=binding.name, host=pre.host, method=pre.method,
                                path=pre.target.partition("?")[0][:300],
                                rule=str(decision.origin))
            conn.commit()
        return Grant(run_id, who.project, decision, binding, value.decode("utf-8", "replace"),
                     policy.budgets)
