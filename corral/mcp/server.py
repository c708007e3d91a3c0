"""The MCP server (official SDK 2.x ``MCPServer``) exposing corral's sandboxed tools.

Every tool call goes: principal -> gate (policy) -> approval (an "always" rule or a live grant;
else MCP elicitation when the client declared it, else a pending approval the human decides
with ``corral approvals``) -> execution inside the principal's sandbox -> audit.

Approvals use the SDK's resolver pattern (``Annotated[..., Resolve(fn)]`` returning ``Elicit``),
so both protocol generations work: the handshake era gets a mid-call ``elicitation/create``,
2026-07-28 gets an ``InputRequiredResult`` and the client's retry. A resolver may re-run on each
round; it only finds or creates the same pending approval, so that is harmless.

Invariants:
- The tool body never runs the call unless the gate said no approval is needed, or a grant for
  exactly these arguments was consumed, or the human accepted the elicitation (recorded as a
  decision on the same pending approval, then consumed like any grant).
- Only an explicit ``decline`` (or an accepted form that says no) is recorded as a denial. A
  ``cancel`` (the client could not or did not ask: Claude Code in ``-p`` mode cancels every
  elicitation) decides nothing: the call stays pending for another approver, and the result
  names the approval id and the ``corral approvals approve ID`` command; a retry after that
  approval runs the call.
"""


from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.elicitation import (
    AcceptedElicitation,
    CancelledElicitation,
    ElicitationResult,
)
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from pydantic import BaseModel, Field

from corral.errors import CorralError
from corral.mcp.principals import STDIO, Principals, TokenTable
from corral.tools.approvals import current_user
from corral.tools.executor_client import ExecutorGone, ToolFailure
from corral.tools.service import Gate, denied_message, pending_message

__all__ = ["ApprovalForm", "build_server"]

INSTRUCTIONS = (
    "Tools that run inside a corral sandbox: the workspace is /workspace; network access goes "
    "through the policy proxy. Some calls need human approval: if a result says an approval is "
    "pending, tell the user the approval ID and retry the SAME call after they approve it."
)


class ApprovalForm(BaseModel):
    approve: bool = Field(description="Run this call?")
    always: bool = Field(
        default=False, description="Always allow this command in this workspace under this policy"
    )
    reason: str = Field(default="", description="Why (recorded in the audit trail)")


@dataclass(frozen=True)
class _Go:
    gate: Gate


@dataclass(frozen=True)
class _Held:
    message: str


def build_server(
    principals: Principals,
    *,
    tokens: TokenTable | None = None,
    elicitation: bool = True,
) -> MCPServer:
    """An ``MCPServer`` with the seven tools, serving ``principals``."""
    server: MCPServer = MCPServer(name="corral", instructions=INSTRUCTIONS, log_level="WARNING")

    def principal_of(ctx: Context) -> str:
        headers = ctx.headers
        if headers is None or tokens is None:
            return STDIO
        name = tokens.principal(headers.get("authorization"))
        if name is None:  # the HTTP middleware refuses these before they get here
            raise ToolError("not authenticated")
        return name

    async def decide(tool: str, args: dict[str, Any], ctx: Context) -> Any:
        tools = principals.tools(principal_of(ctx))

        def check() -> _Go | _Held | tuple[Gate, Any]:
            gate = tools.gate(tool, args)
            if tools.authorize(tool, args, gate):
                return _Go(gate)
            denied = tools.denial(tool, args)
            if denied is not None:
                return _Held(denied_message(denied, tool))
            return gate, tools.hold(tool, args, gate)

        try:
            outcome = await anyio.to_thread.run_sync(check)
        except CorralError as err:  # e.g. the sandbox could not be set up: say why, one line
            raise ToolError(str(err)) from None
        if isinstance(outcome, _Go | _Held):
            return outcome
        gate, approval = outcome
        caps = ctx.client_capabilities
        if elicitation and caps is not None and caps.elicitation is not None:
            return Elicit(
                f"corral: allow {tool} `{gate.summary}`? It needs approval: {gate.reason}. "
                f"(approval {approval.id}; workspace {tools.workspace})",
                ApprovalForm,
            )
        return _Held(pending_message(approval, tool))

    async def finish(
        tool: str, args: dict[str, Any], ctx: Context, outcome: ElicitationResult[Any]
    ) -> dict[str, Any]:
        principal = principal_of(ctx)
        tools = principals.tools(principal)
        by = f"{principal} via MCP elicitation (server user {current_user()})"
        if isinstance(outcome, CancelledElicitation):
            def still_pending() -> str:
                pending = tools.hold(tool, args, tools.gate(tool, args))
                return pending_message(pending, tool)
            message = await anyio.to_thread.run_sync(still_pending)
            raise ToolError("corral: the approval prompt was cancelled, so nothing was decided; "
                            + message.removeprefix("corral: "))
        if not isinstance(outcome, AcceptedElicitation):
            def refuse() -> None:
                gate = tools.gate(tool, args)
                pending = tools.hold(tool, args, gate)
                tools.store.decide(pending.id, approve=False, by=by, reason=outcome.action)
            await anyio.to_thread.run_sync(refuse)
            raise ToolError(f"the user did not approve this {tool} call ({outcome.action})")
        data = outcome.data
        if isinstance(data, _Held):
            raise ToolError(data.message)
        if isinstance(data, ApprovalForm):
            form = data

            def record() -> Gate:
                gate = tools.gate(tool, args)
                pending = tools.hold(tool, args, gate)
                tools.store.decide(pending.id, approve=form.approve, by=by,
                                   reason=form.reason or None, always=form.always)
                if form.approve and not tools.authorize(tool, args, gate):
                    raise ToolError("the approval could not be used; retry the call")
                return gate

            gate = await anyio.to_thread.run_sync(record)
            if not form.approve:
                raise ToolError(f"the user denied this {tool} call"
                                + (f": {form.reason}" if form.reason else ""))
        else:
            gate = data.gate

        def progress(info: dict[str, Any]) -> None:
            anyio.from_thread.run(ctx.report_progress, float(info.get("elapsed") or 0),
                                  info.get("total"), info.get("message"))

        def run() -> dict[str, Any]:
            return tools.run(tool, args, gate=gate, on_progress=progress)

        try:
            return await anyio.to_thread.run_sync(run)
        except ToolFailure as err:
            raise ToolError(str(err)) from None
        except ExecutorGone as err:
            raise ToolError(f"the sandbox's executor stopped ({err}); retry the call") from None
        except CorralError as err:  # a sandbox that cannot start: the reason, not a traceback
            raise ToolError(str(err)) from None

    # -- resolvers: one per tool, taking the tool's arguments by name --------------------------

    async def gate_exec(command: str, cwd: str, timeout: float, ctx: Context) -> Any:
        return await decide("exec", {"command": command, "cwd": cwd, "timeout": timeout}, ctx)

    async def gate_read(path: str, offset: int, limit: int, ctx: Context) -> Any:
        return await decide("read", {"path": path, "offset": offset, "limit": limit}, ctx)

    async def gate_write(path: str, content: str, ctx: Context) -> Any:
        return await decide("write", {"path": path, "content": content}, ctx)

    async def gate_edit(path: str, old_string: str, new_string: str, replace_all: bool,
                        ctx: Context) -> Any:
        return await decide("edit", {"path": path, "old_string": old_string,
                                     "new_string": new_string, "replace_all": replace_all}, ctx)

    async def gate_glob(pattern: str, path: str, ctx: Context) -> Any:
        return await decide("glob", {"pattern": pattern, "path": path}, ctx)

    async def gate_grep(pattern: str, path: str, glob: list[str], ignore_case: bool,
                        fixed_strings: bool, files_only: bool, context: int, ctx: Context) -> Any:
        return await decide("grep", _grep_args(pattern, path, glob, ignore_case, fixed_strings,
                                               files_only, context), ctx)

    async def gate_fetch(url: str, method: str, headers: dict[str, str], body: str | None,
                         timeout: float, ctx: Context) -> Any:
        return await decide("fetch", {"url": url, "method": method, "headers": headers,
                                      "body": body, "timeout": timeout}, ctx)

    Outcome = ElicitationResult[ApprovalForm]

    @server.tool(name="exec", description=(
        "Run a bash command inside the sandbox (cwd relative to /workspace). Returns exit_code, "
        "stdout, stderr (each truncated with a marker past 64 KiB). Reports progress."))
    async def exec_tool(
        command: str, ctx: Context, approval: Annotated[Outcome, Resolve(gate_exec)],
        cwd: str = ".", timeout: float = 120.0,
    ) -> dict[str, Any]:
        args = {"command": command, "cwd": cwd, "timeout": timeout}
        return await finish("exec", args, ctx, approval)

    @server.tool(name="read", description=(
        "Read a text file: lines offset.. (1-based), at most limit lines. Paths are relative to "
        "/workspace; reading outside the workspace needs approval."))
    async def read_tool(
        path: str, ctx: Context, approval: Annotated[Outcome, Resolve(gate_read)],
        offset: int = 1, limit: int = 2000,
    ) -> dict[str, Any]:
        return await finish("read", {"path": path, "offset": offset, "limit": limit}, ctx,
                            approval)

    @server.tool(name="write", description="Create or overwrite a file in the workspace.")
    async def write_tool(
        path: str, content: str, ctx: Context, approval: Annotated[Outcome, Resolve(gate_write)],
    ) -> dict[str, Any]:
        return await finish("write", {"path": path, "content": content}, ctx, approval)

    @server.tool(name="edit", description=(
        "Replace old_string with new_string in a workspace file; fails unless old_string occurs "
        "exactly once (or replace_all is set)."))
    async def edit_tool(
        path: str, old_string: str, new_string: str, ctx: Context,
        approval: Annotated[Outcome, Resolve(gate_edit)], replace_all: bool = False,
    ) -> dict[str, Any]:
        args = {"path": path, "old_string": old_string, "new_string": new_string,
                "replace_all": replace_all}
        return await finish("edit", args, ctx, approval)

    @server.tool(name="glob", description=(
        "List files matching a glob pattern (** recurses) under path (default the workspace)."))
    async def glob_tool(
        pattern: str, ctx: Context, approval: Annotated[Outcome, Resolve(gate_glob)],
        path: str = ".",
    ) -> dict[str, Any]:
        return await finish("glob", {"pattern": pattern, "path": path}, ctx, approval)

    @server.tool(name="grep", description=(
        "Search file contents with ripgrep (regex unless fixed_strings); glob filters files."))
    async def grep_tool(
        pattern: str, ctx: Context, approval: Annotated[Outcome, Resolve(gate_grep)],
        path: str = ".", glob: list[str] = [], ignore_case: bool = False,  # noqa: B006
        fixed_strings: bool = False, files_only: bool = False, context: int = 0,
    ) -> dict[str, Any]:
        args = _grep_args(pattern, path, glob, ignore_case, fixed_strings, files_only, context)
        return await finish("grep", args, ctx, approval)

    @server.tool(name="fetch", description=(
        "HTTP request from inside the sandbox, through the policy proxy (egress policy applies; "
        "a denied request returns the proxy's 403 and the rule that denied it)."))
    async def fetch_tool(
        url: str, ctx: Context, approval: Annotated[Outcome, Resolve(gate_fetch)],
        method: str = "GET", headers: dict[str, str] = {},  # noqa: B006
        body: str | None = None, timeout: float = 30.0,
    ) -> dict[str, Any]:
        args = {"url": url, "method": method, "headers": headers, "body": body,
                "timeout": timeout}
        return await finish("fetch", args, ctx, approval)

    return server


def _grep_args(pattern: str, path: str, glob: list[str], ignore_case: bool,
               fixed_strings: bool, files_only: bool, context: int) -> dict[str, Any]:
    return {"pattern": pattern, "path": path, "glob": list(glob), "ignore_case": ignore_case,
            "fixed_strings": fixed_strings, "files_only": files_only, "context": context}
