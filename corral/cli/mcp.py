"""Serve corral's sandboxed tools (exec, files, fetch) to an agent outside, over MCP.

``corral mcp``: its arguments, checked and parsed; ``corral.runtime.mode1`` does the rest.
The first line above is the group's help in ``corral --help``.

Serves sandboxed tools to outside agents over MCP (stdio, or streamable HTTP with --http);
with --project P, as runs of project P on corral server (``corral.runtime.mcp_project``).
The quick flags (``--allow`` to ``--idle``) are checked at parse time and composed as one more
policy exactly as under ``corral run`` (``corral.policy.quick``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from corral.cli import checks
from corral.errors import UserInputError
from corral.policy.errors import PolicyError
from corral.policy.quick import QuickFlags, QuickPolicy, quick_policy

__all__ = ["app", "parse_tokens"]

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


def _quick_opt(field: str) -> Callable[[Any], Any]:
    """Check a quick flag's values as ``corral run`` does (``corral.policy.quick``)."""
    def check(value: Any) -> Any:
        if value:
            try:
                given: dict[str, Any] = {field: tuple(value) if isinstance(value, list)
                                         else value}
                quick_policy(QuickFlags(**given))
            except PolicyError as err:  # "--flag 'v': why"; typer names the flag itself
                raise typer.BadParameter(err.problems[0].split(" ", 1)[1]) from None
        return value
    return check


def _quick(allow: list[str], ro: list[str], rw: list[str], memory: str | None,
           timeout: str | None, idle: str | None) -> QuickPolicy | None:
    flags = QuickFlags(tuple(allow), tuple(ro), tuple(rw), memory, timeout, idle)
    try:
        return quick_policy(flags) if flags.given() else None
    except PolicyError as err:  # what no single value shows (a path both --ro and --rw)
        raise UserInputError(err.problems[0]) from None


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
    project: str | None = typer.Option(None, "--project", metavar="P",
                                       callback=checks.resource_name,
                                       help="Serve under project P's policy from corral server: "
                                       "each sandbox is a run of P, approvals are held there, "
                                       "--http callers use server-issued tokens."),
    agent: str | None = typer.Option(None, "--agent", metavar="A", callback=checks.agent_name,
                                     help="The project's agent identity (with --project)."),
    server: str | None = typer.Option(None, "--server", metavar="URL",
                                      callback=checks.server_url,
                                      help="corral server URL (default: $CORRAL_SERVER)."),
    allow: list[str] = typer.Option([], "--allow", metavar="HOST[:PORT]",
                                    callback=_quick_opt("allow"),
                                    help="Allow HOST (ports 80 and 443 unless given) as an "
                                    "inspect rule (as on corral run)."),
    ro: list[str] = typer.Option([], "--ro", metavar="PATH", callback=_quick_opt("ro"),
                                 help="Make PATH visible read-only (as on corral run)."),
    rw: list[str] = typer.Option([], "--rw", metavar="DIR", callback=_quick_opt("rw"),
                                 help="Make DIR writable at the same path (as on corral run)."),
    memory: str | None = typer.Option(None, "--memory", metavar="SIZE",
                                      callback=_quick_opt("memory"),
                                      help="Memory limit of each tools sandbox (limits.memory)."),
    timeout: str | None = typer.Option(None, "--timeout", metavar="DURATION",
                                       callback=_quick_opt("timeout"),
                                       help="Wall-time limit of each tools sandbox "
                                       "(limits.wall)."),
    idle: str | None = typer.Option(None, "--idle", metavar="DURATION",
                                    callback=_quick_opt("idle"),
                                    help="Tear a tools sandbox down after this long unused "
                                    "(limits.idle)."),
) -> None:
    """Serve the exec/read/write/edit/glob/grep/fetch tools from a corral sandbox."""
    from corral.runtime import preflight_mcp, serve_mcp
    from corral.runtime import upstream_proxy as configured_upstream

    if project is None and (agent or server):
        raise UserInputError(f"--{'agent' if agent else 'server'} needs --project")
    if project is not None and token:
        raise UserInputError("--token: with --project, --http callers use tokens the server "
                             "issued ('corral login', 'corral server token create')")
    upstream = configured_upstream(upstream_proxy)  # refuse bad input before serving anything
    quick = _quick(allow, ro, rw, memory, timeout, idle)
    found = None
    if project is not None:
        from corral.runtime.mcp_project import mcp_project

        found = mcp_project(project, agent, server, policy, workspace, quick)
        if found.found.offline:
            _announce(f"--project {project}: {found.found.offline}")
    preflight_mcp(policy, workspace, found, quick)
    serve_mcp(policy, workspace=workspace, listen=_split_hostport(http) if http else None,
              tokens=parse_tokens(token), origins=allow_origin, elicitation=approvals == "auto",
              approval_ttl=approval_ttl, upstream_proxy=upstream, announce=_announce,
              project=found, quick=quick)


def _announce(line: str) -> None:
    print(f"corral mcp: {line}", file=sys.stderr, flush=True)
