"""Mode 1 assembled: corral's tools served over MCP to an agent outside (``corral mcp``).

This is where the parts meet for Mode 1, as ``egress`` and ``audit`` are where they meet for
Mode 2: the resolved policy, one tools sandbox per principal (built on first use with the same
egress and audit wiring as ``corral run``), the approval store, the MCP server and its
transport (stdio, or streamable HTTP behind bearer tokens). ``corral.cli.mcp`` only parses
arguments and prints what ``announce`` is given.

Invariants:
- ``preflight_mcp`` refuses what ``corral run`` would refuse for the same policies, quick flags
  (``corral.policy.quick``, composed as one more policy), workspace and credentials (every
  secret the policy binds must be readable), with the same messages, before anything is
  served.
- There is no unauthenticated HTTP mode: without tokens one is generated and announced.
- The listening socket is bound before its URL is announced (``127.0.0.1:0`` works).
- However serving ends (a client hanging up, SIGTERM, SIGHUP, ^C), every principal's sandbox
  is torn down and the trails are closed before ``serve_mcp`` returns or raises.
- Approvals decided outside the server (``approval_store``) are audited in a trail of their
  own, closed when the caller is done.
- With ``project`` (``--project P``) the policy is the project's (``mcp_project``), each tools
  sandbox is a run of P on corral server, approvals are held there and never decided locally
  (no elicitation, no local store), its proxy reserves metered requests on the server under
  that run (``spend_server``), and over HTTP the bearer tokens are server-issued ones the
  server vouches for (``corral.runtime.mcp_project``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.errors import UserInputError

if TYPE_CHECKING:
    from corral.mcp import Authenticator, Principals
    from corral.policy import ResolvedPolicy
    from corral.policy.quick import QuickPolicy
    from corral.runtime.audit import LaunchAudit
    from corral.runtime.mcp_project import McpProject, ProjectRuns
    from corral.tools import ApprovalStore, AuditSink

__all__ = ["approval_store", "preflight_mcp", "serve_mcp"]


def _resolve(policies: Sequence[str], workspace: Path | None,
             quick: QuickPolicy | None) -> ResolvedPolicy:
    from corral.policy import resolve

    return resolve(list(policies), workspace=workspace.resolve() if workspace else None,
                   quick=quick)


def preflight_mcp(policies: Sequence[str], workspace: Path | None,
                  project: McpProject | None = None, quick: QuickPolicy | None = None) -> None:
    """Refuse, as ``UserInputError``, what ``corral run`` refuses before it starts: the
    policies, the quick flags, the workspace, every path the policy makes visible and every
    secret it binds (``server:`` ones stay on the server and are not read)."""
    from corral.credentials import resolve_secrets
    from corral.sandbox import SandboxSpec, validate

    rp = project.found.policy if project is not None else _resolve(policies, workspace, quick)
    # Read once here and dropped: a missing secret would otherwise surface only at the first
    # tool call, as a failed call, long after the user who could fix it started the server.
    resolve_secrets(rp)
    try:
        validate(SandboxSpec(policies=tuple(rp.names), limits=rp.limits, files=rp.files,
                             workspace=rp.files.workspace))
    except UserInputError:
        raise
    except Exception as err:  # CorralError(exit 125) under run: bad input here, exit 2
        raise UserInputError(str(err)) from None


@contextlib.contextmanager
def approval_store() -> Iterator[ApprovalStore]:
    """The approval store, its decisions audited in a short trail of this invocation."""
    from corral.audit import Actor, AuditStore
    from corral.runtime.audit import ToolAudit
    from corral.tools import ApprovalStore

    with AuditStore.open() as audit:
        trail = audit.trail(f"approvals-{secrets.token_hex(4)}", actor=Actor.current())
        try:
            yield ApprovalStore(audit=ToolAudit(trail))
        finally:
            trail.close(status="ok")


def _principals(rp: ResolvedPolicy, *, store: ApprovalStore, audit: AuditSink,
                launch: LaunchAudit | None, upstream_proxy: str | None,
                runs: ProjectRuns | None = None) -> Principals:
    """One ``Tools`` per principal, each over its own sandbox made on first use (with
    ``runs``, each sandbox a run on corral server, its tool events in its own trail)."""
    from corral.mcp import Principals
    from corral.runtime.egress import proxied_opener
    from corral.runtime.mcp_project import RunTrail
    from corral.sandbox import SandboxSpec
    from corral.tools import SandboxProvider, ShellSession, ToolPolicy, Tools

    tool_policy = ToolPolicy.from_resolved(rp)
    ws = rp.files.workspace

    def factory(principal: str) -> Tools:
        spec = SandboxSpec(policies=tuple(rp.names), limits=rp.limits, files=rp.files,
                           workspace=ws)
        as_runs = runs is not None and launch is not None
        opener = proxied_opener(rp, sandbox_audit=launch, upstream_proxy=upstream_proxy,
                                proxy_audit=launch.proxy_audit if launch is not None else None,
                                spend_server=as_runs)  # a run's budgets are on the server too
        sink = audit
        if runs is not None and launch is not None:
            opener = runs.opener(principal, opener)
        provider = SandboxProvider(spec, opener=opener)
        if runs is not None and launch is not None:
            sink = RunTrail(launch, lambda: provider.sandbox_id, audit)
        session = ShellSession(provider, idle=rp.limits.idle)
        ident = str(ws) if ws is not None else f"ephemeral:{principal}:{os.getpid()}"
        return Tools(tool_policy, session, store, workspace=ident, audit=sink,
                     principal=principal)

    return Principals(factory)


def _stop_on_signals() -> None:
    def stop(signum: int, frame: Any) -> None:
        # An exception, so that serve_mcp's ``finally`` tears the sandboxes down (uvicorn
        # re-raises the signal it caught once it has shut down).
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def serve_mcp(
    policies: Sequence[str],
    *,
    workspace: Path | None,
    listen: tuple[str, int] | None,
    tokens: Mapping[str, str],
    origins: Sequence[str],
    elicitation: bool,
    approval_ttl: float,
    upstream_proxy: str | None = None,
    audit: AuditSink | None = None,
    announce: Callable[[str], None] = lambda line: None,
    project: McpProject | None = None,
    quick: QuickPolicy | None = None,
) -> None:
    """Serve the tools over stdio (``listen`` None) or streamable HTTP on ``listen``, until
    the client goes or a signal ends it. ``audit`` replaces the trail (tests); ``quick`` is
    the quick flags' policy, composed with ``policies`` as under ``corral run``."""
    import anyio

    from corral.mcp import TokenTable, bind, build_server, serve_http
    from corral.tools import ApprovalStore

    if os.geteuid() != 0:
        raise UserInputError("corral mcp must run as root (it builds sandboxes)")
    _stop_on_signals()
    rp = project.found.policy if project is not None else _resolve(policies, workspace, quick)
    launch = None
    if audit is None or project is not None:
        from corral.runtime.audit import open_audit

        # one trail per tools sandbox (lifecycle, exec, proxy), as under `corral run`, and
        # this server's trail for tool calls and approvals
        launch = open_audit(rp, mode="mcp")
        audit = launch.tool_audit(f"mcp-{secrets.token_hex(4)}")
    assert audit is not None
    store = ApprovalStore(ttl=approval_ttl, audit=audit)
    runs = None
    table: Authenticator | None = None
    if project is not None:
        from corral.runtime.mcp_project import ProjectRuns, ServerCallers

        assert launch is not None
        callers = ServerCallers(project.target) if listen is not None else None
        runs = ProjectRuns(project, launch, callers, approval_ttl)
        table = callers
        elicitation = False  # a project's held calls are decided on the server only
    elif listen is not None:
        named = dict(tokens) or {"default": secrets.token_urlsafe(32)}
        if not tokens:
            announce(f"generated bearer token: {named['default']}")
        table = TokenTable(named)
    principals = _principals(rp, store=store, audit=audit, launch=launch,
                             upstream_proxy=upstream_proxy, runs=runs)
    server = build_server(principals, tokens=table, elicitation=elicitation, held=runs)
    try:
        if listen is None or table is None:
            anyio.run(server.run_stdio_async)
        else:
            host, port = listen
            shown = f"[{host}]" if ":" in host else host
            try:
                sock = bind(host, port)
            except OSError as err:
                raise UserInputError(f"--http {shown}:{port}: cannot listen: {err.strerror}") \
                    from None
            announce(f"serving http://{shown}:{sock.getsockname()[1]}/mcp")
            anyio.run(serve_http, server, sock, table, origins)
    except KeyboardInterrupt:
        pass
    finally:
        principals.close()
        if launch is not None:
            launch.close(status="stopped")
