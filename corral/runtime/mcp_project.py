"""``corral mcp --project P``: the tools sandboxes as runs of project P on ``corral server``.

The policy is pulled and trusted exactly as for ``corral run --project`` (``project.target``,
``project.project_policy``: local ``-p``/``--workspace`` may only narrow it). Each tools
sandbox is a run: registered when the sandbox opens, shipped, heartbeated and ended by the
same ``Reporter`` as ``corral run``. A call that needs approval is held on the server (the
run's sandbox token asks, the decision is long-polled) and runs once a human with the right
role approved it there; over ``--http`` each bearer token is a server-issued token that the
server vouches for (``ServerCallers``), so every caller is a known user and its own run.

Invariants:
- Nothing local decides a project's held call: the local approvals store, MCP elicitation and
  the run's own token never do (the server refuses the latter). Only ``approved`` on the server
  runs the call; a denial, an expiry, an unreachable server or an unregistered run refuse it.
- A caller's token is accepted only while the server says it is a live user or service token
  that may start runs in P; the answer is cached for ``CALLER_TTL_S`` (a revoked token stops
  working within that time). The token is kept in memory (root side) only to register that
  caller's runs, so the run's human is the caller.
- Tool and approval events of a principal go into its sandbox's trail, so they ship with its
  run; a kill from the server ends that run and every later call of that principal is refused
  with the reason.
- A tools sandbox's proxy is a project run's (``spend_server``): once its run registered, the
  proxy is told the run's server URL, id and sandbox token (its ``platform`` relay and budget
  ledger), or why there is none; its metered requests reserve and settle on the server under
  that run, and without that configuration they are refused (503), never served on local
  budgets alone (``corral.proxy.spend_server``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from corral.errors import CorralError

if TYPE_CHECKING:
    from corral.policy.quick import QuickPolicy
    from corral.runtime.audit import LaunchAudit
    from corral.runtime.project import ProjectPolicy, Target
    from corral.runtime.report import Reporter
    from corral.tools import Gate, Opened, Tools

__all__ = ["CALLER_TTL_S", "McpProject", "ProjectRuns", "RunTrail", "ServerCallers",
           "mcp_project"]

CALLER_TTL_S = 30.0
WAIT_STEP_S = 8.0


class McpProject(NamedTuple):
    target: Target
    found: ProjectPolicy


def mcp_project(project: str, agent: str | None, server: str | None,
                policies: Sequence[str], workspace: Path | None,
                quick: QuickPolicy | None = None) -> McpProject:
    """The project's policy narrowed by the local ``-p`` files and quick flags, as
    ``corral run`` gets it."""
    from corral.policy import PolicyError
    from corral.policy.load import load_policy
    from corral.runtime.project import project_policy, target

    try:
        local = [load_policy(spec) for spec in policies]
    except PolicyError as err:
        raise CorralError("; ".join(err.problems), exit_code=125) from None
    t = target(project, agent, server)
    return McpProject(t, project_policy(t, local, quick, str(workspace) if workspace else None))


class ServerCallers:
    """Bearer tokens vouched for by the server -> the caller's identity (its principal)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._seen: dict[bytes, tuple[str, float]] = {}  # sha256(token) -> (who, until)
        self._tokens: dict[str, str] = {}  # who -> the token its runs register with

    def principal(self, authorization: str | None) -> str | None:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        key = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._seen.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        from corral.client import ClientError, introspect

        t = self.target
        try:
            who = str(introspect(t.url, t.token, t.project, token)["actor"])
        except ClientError:
            return None  # refused, or the server is away: no unknown caller gets in
        with self._lock:
            self._seen[key] = (who, now + CALLER_TTL_S)
            self._tokens[who] = token
        return who

    def token_of(self, who: str) -> str | None:
        with self._lock:
            return self._tokens.get(who)


class RunTrail:
    """A principal's tool and approval events: into its sandbox's trail while one is open."""

    def __init__(self, launch: LaunchAudit, sandbox_id: Callable[[], str | None],
                 fallback: Any) -> None:
        self.launch, self.sandbox_id, self.fallback = launch, sandbox_id, fallback

    def emit(self, event_type: str, **fields: Any) -> None:
        from corral.runtime.audit import ToolAudit

        sid = self.sandbox_id()
        sink = ToolAudit(self.launch.trail(sid)) if sid is not None else self.fallback
        sink.emit(event_type, **fields)


class _Serving:
    """A tools sandbox's egress, serving already (the opener attached it), as the ``inner``
    hooks of its run's ``Reporter``: registering tells that proxy where its ``platform`` and
    metered requests go (the reporter reads ``policy`` and ``proc``, as under ``corral run``)."""

    def __init__(self, egress: Any) -> None:
        self.policy, self.proc = egress.policy, egress.proc

    def started(self, sb: Any) -> dict[str, str]:
        return {}

    def finished(self, sb: Any) -> None:
        return None


class ProjectRuns:
    """One ``Reporter`` (one server run) per tools sandbox, and the held calls of those runs."""

    def __init__(self, project: McpProject, launch: LaunchAudit,
                 callers: ServerCallers | None, ttl: float) -> None:
        self.project, self.launch, self.callers, self.ttl = project, launch, callers, ttl
        self._lock = threading.Lock()
        self._live: dict[str, Reporter] = {}  # principal -> the run of its open sandbox
        self._killed: dict[str, str] = {}  # principal -> why the server stopped its run

    def opener(self, principal: str, base: Callable[[Any], Opened]) -> Callable[[Any], Opened]:
        """``base`` (sandbox + proxy) with the sandbox registered as a run of the project."""
        from corral.runtime.project import Target
        from corral.runtime.report import Reporter
        from corral.tools import Opened

        def open_(spec: Any) -> Opened:
            with self._lock:
                killed = self._killed.get(principal)
            if killed is not None:
                raise CorralError(f"corral: this caller's run was stopped from the server "
                                  f"({killed}); no more calls are served for it")
            t = self.project.target
            token = self.callers.token_of(principal) if self.callers is not None else None
            target = Target(t.url, token or t.token, t.project, t.agent)
            found = self.project.found
            reporter = Reporter(target, digest=found.digest, command=["corral", "mcp"],
                                require_server=found.require_server,
                                store=self.launch.store.path)
            opened = base(spec)
            if opened.egress is not None:
                reporter.inner = _Serving(opened.egress)
            try:
                reporter.started(opened.sandbox)
            except BaseException:
                opened.close()
                raise
            with self._lock:
                self._live[principal] = reporter

            def close() -> None:
                with self._lock:
                    self._live.pop(principal, None)
                    if reporter.kill_reason is not None:
                        self._killed[principal] = reporter.kill_reason
                try:
                    opened.close()  # the sandbox's trail is closed by its teardown event
                finally:
                    reporter.end(137 if reporter.kill_reason else 0)

            return Opened(opened.sandbox, close)

        return open_

    # -- held calls ---------------------------------------------------------------------------

    def ask(self, principal: str, tools: Tools, tool: str, args: dict[str, Any], gate: Gate,
            waiting: Callable[[str], None]) -> str | None:
        """Hold the call on the server until a human decides: None when approved, else the
        message the caller gets."""
        from corral.client import ClientError, ServerRun
        from corral.tools import args_digest

        tools.session.ensure()  # the sandbox, and so the run that asks, must exist first
        with self._lock:
            reporter = self._live.get(principal)
            killed = self._killed.get(principal)
        run = reporter.run if reporter is not None else None
        if run is None:
            why = f"stopped from the server ({killed})" if killed else \
                "not registered with the server (it was unreachable at start)"
            return (f"corral: this {tool} call needs approval ({gate.reason}), which is held "
                    f"on corral server, but this run is {why}; the call was not run")
        # a connection of its own: the reporter's is busy shipping and heartbeating
        asker = ServerRun(run.url, run.id, run.client.token or "")
        try:
            ident = asker.request_approval(tool, args, rule=gate.reason,
                                           caller=principal if self.callers else None)
            tools.audit.emit("approval.request", request_id=ident, tool=tool,
                             summary=gate.summary, reason=gate.reason,
                             args_digest=args_digest(args), policy_digest=tools.policy.digest)
            decision = self._wait(asker, ident, tool, waiting)
        except ClientError as err:
            return f"corral: the {tool} call was not run: holding it on the server failed: {err}"
        finally:
            asker.close()
        tools.audit.emit("approval.decide", request_id=ident, decision=decision.status,
                         by=decision.decided_by or "timeout", tool=tool, reason=decision.reason)
        if decision.status == "approved":
            return None
        if decision.status == "pending":
            return (f"corral: no decision on approval {ident} within {int(self.ttl)} s; the "
                    f"{tool} call was not run (a retry asks again)")
        why = f": {decision.reason}" if decision.reason else ""
        return (f"corral: this {tool} call was {decision.status} by {decision.decided_by} "
                f"(approval {ident} on corral server){why}. Do not retry it unchanged; ask "
                "the user how to proceed.")

    def _wait(self, asker: Any, ident: str, tool: str, waiting: Callable[[str], None]) -> Any:
        deadline = time.monotonic() + self.ttl
        t = self.project.target
        note = (f"corral: {tool} call held as approval {ident} on corral server; approve it "
                f"with `corral approvals approve --project {t.project} {ident}` or in the web "
                "UI's Approvals page")
        while True:
            waiting(note)
            left = deadline - time.monotonic()
            decision = asker.wait_decision(ident, max(0.0, min(WAIT_STEP_S, left)))
            if decision.status != "pending" or time.monotonic() >= deadline:
                return decision
