"""Serve sandboxed tools to outside agents over MCP (stdio, or streamable HTTP with --http)."""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from corral.cli import checks
from corral.errors import UserInputError

__all__ = ["app", "parse_tokens", "serve"]

app = typer.Typer(add_completion=False, invoke_without_command=True)


def parse_tokens(values: list[str]) -> dict[str, str]:
    """``--token T`` or ``--token NAME=T``; each distinct name is its own principal."""
    tokens: dict[str, str] = {}
    for i, value in enumerate(values):
        name, sep, token = value.partition("=")
        if not sep:
            name, token = ("default" if i == 0 else f"token{i + 1}"), value
        if len(token) < 16:
            raise UserInputError(f"--token {name}: too short (use at least 16 characters)")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise UserInputError(f"--token {name}=...: the name must be letters, digits, - or _")
        tokens[name] = token
    return tokens


def _split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UserInputError(f"--http {value}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port)


def _hostport_opt(value: str | None) -> str | None:
    if value is not None:
        try:
            _split_hostport(value)
        except UserInputError as err:
            raise typer.BadParameter(str(err).removeprefix(f"--http {value}: ")) from None
    return value


def _tokens_opt(values: list[str]) -> list[str]:
    try:
        parse_tokens(values)
    except UserInputError as err:
        raise typer.BadParameter(str(err).removeprefix("--token ")) from None
    return values


def _workspace_opt(value: Path | None) -> Path | None:
    if value is not None and not value.is_dir():
        raise typer.BadParameter(f"{value}: no such directory")
    return value


def _preflight(policies: list[str], workspace: Path | None) -> None:
    """What ``corral run`` refuses before it starts, refused here with the same messages:
    policies, the workspace and every path the policy makes visible."""
    from corral.policy import resolve
    from corral.sandbox import SandboxSpec
    from corral.sandbox.workspace import validate

    rp = resolve(policies, workspace=workspace.resolve() if workspace is not None else None)
    try:
        validate(SandboxSpec(policies=tuple(rp.names), limits=rp.limits, files=rp.files,
                             workspace=rp.files.workspace))
    except UserInputError:
        raise
    except Exception as err:  # CorralError(exit 125) under run: bad input here, exit 2
        raise UserInputError(str(err)) from None


@app.callback()
def mcp(
    policy: list[str] = typer.Option([], "-p", "--policy", help="Policy file or builtin:NAME."),
    workspace: Path | None = typer.Option(None, "--workspace", help="Host dir at /workspace.",
                                          callback=_workspace_opt),
    http: str | None = typer.Option(None, "--http", metavar="HOST:PORT", callback=_hostport_opt,
                                    help="Serve streamable HTTP instead of stdio."),
    token: list[str] = typer.Option([], "--token", help="Bearer token ([NAME=]TOKEN) for --http; "
                                    "generated and printed if not given.", callback=_tokens_opt),
    allow_origin: list[str] = typer.Option([], "--allow-origin", callback=checks.origins,
                                           help="Allowed Origin (default: localhost origins)."),
    approvals: str = typer.Option("auto", "--approvals", callback=checks.choice("auto", "cli"),
                                  help="auto: MCP elicitation when the client supports it, else "
                                  "pending for `corral approvals`; cli: always pending."),
    approval_ttl: float = typer.Option(600.0, "--approval-ttl", help="Seconds before a pending "
                                       "approval expires (denied).", min=1, max=30 * 86400),
    upstream_proxy: str | None = typer.Option(None, "--upstream-proxy", metavar="URL",
                                              help="Send all egress through this HTTP proxy "
                                              "(default: upstream_proxy in config.yaml)."),
) -> None:
    """Serve the exec/read/write/edit/glob/grep/fetch tools from a corral sandbox."""
    from corral.runtime.config import upstream_proxy as configured_upstream

    upstream = configured_upstream(upstream_proxy)  # refuse bad input before serving anything
    _preflight(policy, workspace)
    serve(policy, workspace=workspace, http=http, tokens=token, origins=allow_origin,
          elicitation=approvals == "auto", approval_ttl=approval_ttl, upstream_proxy=upstream)


def serve(
    policies: list[str],
    *,
    workspace: Path | None,
    http: str | None,
    tokens: list[str],
    origins: list[str],
    elicitation: bool,
    approval_ttl: float,
    audit: Any = None,
    upstream_proxy: str | None = None,
) -> None:
    import anyio

    from corral.mcp.principals import Principals, TokenTable
    from corral.mcp.server import build_server
    from corral.policy import resolve
    from corral.runtime.egress import proxied_opener
    from corral.sandbox import SandboxSpec
    from corral.tools.approvals import ApprovalStore
    from corral.tools.provision import SandboxProvider
    from corral.tools.service import ToolPolicy, Tools
    from corral.tools.session import ShellSession

    if os.geteuid() != 0:
        raise UserInputError("corral mcp must run as root (it builds sandboxes)")

    def stop(signum: int, frame: Any) -> None:
        # Turn SIGTERM/SIGHUP into an exception so the ``finally`` below tears the sandboxes
        # down (uvicorn re-raises the signal it caught once it has shut down).
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    rp = resolve(policies, workspace=workspace.resolve() if workspace is not None else None)
    tool_policy = ToolPolicy.from_resolved(rp)
    launch = None
    if audit is None:
        from corral.runtime.audit import open_audit

        # the same adapter as `corral run`: one trail per tools sandbox (lifecycle, exec, proxy)
        # and this server's trail for tool calls and approvals
        launch = open_audit(rp, mode="mcp")
        audit = launch.tool_audit(f"mcp-{secrets.token_hex(4)}")
    ws = rp.files.workspace
    store = ApprovalStore(ttl=approval_ttl, audit=audit)

    def factory(principal: str) -> Tools:
        spec = SandboxSpec(policies=tuple(rp.names), limits=rp.limits, files=rp.files,
                           workspace=ws)
        opener = proxied_opener(rp, sandbox_audit=launch, upstream_proxy=upstream_proxy,
                                proxy_audit=launch.proxy_audit if launch is not None else None)
        session = ShellSession(SandboxProvider(spec, opener=opener), idle=rp.limits.idle)
        ident = str(ws) if ws is not None else f"ephemeral:{principal}:{os.getpid()}"
        return Tools(tool_policy, session, store, workspace=ident, audit=audit,
                     principal=principal)

    principals = Principals(factory)
    table: TokenTable | None = None
    if http is not None:
        host, port = _split_hostport(http)
        named = parse_tokens(tokens)
        if not named:
            named = {"default": secrets.token_urlsafe(32)}
            print(f"corral mcp: generated bearer token: {named['default']}", file=sys.stderr)
        table = TokenTable(named)
    server = build_server(principals, tokens=table, elicitation=elicitation)
    try:
        if http is None:
            anyio.run(server.run_stdio_async)
        else:
            from corral.mcp.http import bind, serve_http

            assert table is not None
            try:
                sock = bind(host, port)
            except OSError as err:
                raise UserInputError(f"--http {http}: cannot listen: {err.strerror}") from None
            shown = f"[{host}]" if ":" in host else host
            print(f"corral mcp: serving http://{shown}:{sock.getsockname()[1]}/mcp",
                  file=sys.stderr, flush=True)
            anyio.run(serve_http, server, sock, table, origins)
    except KeyboardInterrupt:
        pass
    finally:
        principals.close()
        if launch is not None:
            launch.close(status="stopped")
