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
- With a ``held`` hook (``corral mcp --project``), a call that needs approval is neither
  elicited nor checked against the local store: it is held by the hook (on corral server) and
  runs only when the hook says it was approved; the caller waits, with progress notes.
- A call that fails for a reason corral anticipated (a ``ToolError`` or ``CorralError`` from
  the resolver or the body: denied, pending, a sandbox or credential that cannot be set up)
  returns that one-line reason as the result's whole text with ``isError`` true, and writes one
  line ``corral mcp: TOOL failed: REASON`` to stderr (control characters escaped). This is done
  once, in the wrapper every tool is made with: the SDK would otherwise prefix
  "Error executing tool TOOL: " and log nothing at our log level. A crash (any other exception)
  is left to the SDK: a generic message to the client, the traceback to the server's log.
- The tools are the rows of ``TOOLS``: a tool's MCP signature, its approval resolver and the
  arguments the gate, the approval and the executor see are all made from the same row, so
  they cannot disagree about a parameter.
"""


import inspect
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

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
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from corral.errors import CorralError
from corral.mcp.principals import STDIO, Authenticator, Principals
from corral.render import visible
from corral.tools import (
    ExecutorGone,
    Gate,
    ToolFailure,
    Tools,
    current_user,
    denied_message,
    pending_message,
)

__all__ = ["TOOLS", "ApprovalForm", "Held", "ToolSpec", "build_server"]

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
    """The call is not run: denied, pending, or it could not be decided; ``message`` says why."""

    message: str


@dataclass(frozen=True)
class _Ask:
    gate: Gate


class Held(Protocol):
    """Where calls that need approval are held when not decided here (corral server)."""

    def ask(self, principal: str, tools: Tools, tool: str, args: dict[str, Any], gate: Gate,
            waiting: Callable[[str], None]) -> str | None:
        """Block until decided: None when approved, else the refusal for the caller."""
        ...


_REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    name: str
    type: Any
    default: Any = _REQUIRED


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, what the client is told, its parameters in schema order."""

    name: str
    description: str
    params: tuple[Param, ...]

    def args(self, given: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments as the gate and executor take them (lists copied)."""
        return {p.name: list(v) if isinstance(v := given[p.name], list) else v
                for p in self.params}


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec("exec", "Run a bash command inside the sandbox (cwd relative to /workspace). "
             "Returns exit_code, stdout, stderr (each truncated with a marker past 64 KiB). "
             "Reports progress.",
             (Param("command", str), Param("cwd", str, "."), Param("timeout", float, 120.0))),
    ToolSpec("read", "Read a text file: lines offset.. (1-based), at most limit lines. Paths are "
             "relative to /workspace; reading outside the workspace needs approval.",
             (Param("path", str), Param("offset", int, 1), Param("limit", int, 2000))),
    ToolSpec("write", "Create or overwrite a file in the workspace.",
             (Param("path", str), Param("content", str))),
    ToolSpec("edit", "Replace old_string with new_string in a workspace file; fails unless "
             "old_string occurs exactly once (or replace_all is set).",
             (Param("path", str), Param("old_string", str), Param("new_string", str),
              Param("replace_all", bool, False))),
    ToolSpec("glob", "List files matching a glob pattern (** recurses) under path (default the "
             "workspace).",
             (Param("pattern", str), Param("path", str, "."))),
    ToolSpec("grep", "Search file contents with ripgrep (regex unless fixed_strings); glob "
             "filters files.",
             (Param("pattern", str), Param("path", str, "."), Param("glob", list[str], []),
              Param("ignore_case", bool, False), Param("fixed_strings", bool, False),
              Param("files_only", bool, False), Param("context", int, 0))),
    ToolSpec("fetch", "HTTP request from inside the sandbox, through the policy proxy (egress "
             "policy applies; a denied request returns the proxy's 403 and the rule that denied "
             "it).",
             (Param("url", str), Param("method", str, "GET"),
              Param("headers", dict[str, str], {}), Param("body", str | None, None),
              Param("timeout", float, 30.0))),
)

_Outcome = ElicitationResult[ApprovalForm]
_Decide = Callable[[str, dict[str, Any], Context], Awaitable[Any]]
_Finish = Callable[[str, dict[str, Any], Context, Any], Awaitable[dict[str, Any]]]


def _signed(fn: Callable[..., Any], name: str, params: list[inspect.Parameter],
            returns: Any) -> Callable[..., Any]:
    """Give ``fn(**kwargs)`` the named signature the SDK reads (schema, resolvers, context)."""
    fn.__name__ = fn.__qualname__ = name
    fn.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    fn.__annotations__ = {p.name: p.annotation for p in params} | {"return": returns}
    return fn


def _keyword(name: str, annotation: Any, default: Any = _REQUIRED) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=default)


def _failed(tool: str, reason: str) -> CallToolResult:
    """The client's result for an anticipated failure, and its one line on stderr."""
    print(f"corral mcp: {tool} failed: {visible(reason)}", file=sys.stderr, flush=True)
    return CallToolResult(content=[TextContent(type="text", text=reason)], is_error=True)


def _tool_function(spec: ToolSpec, decide: _Decide, finish: _Finish) -> Callable[..., Any]:
    """The tool body and its approval resolver, both taking the row's parameters by name."""
    params = [_keyword(p.name, p.type, p.default) for p in spec.params]

    async def gate(**given: Any) -> Any:
        ctx = given.pop("ctx")
        try:
            return await decide(spec.name, spec.args(given), ctx)
        except (ToolError, CorralError) as err:
            # the SDK would prefix a resolver's error: hand it to the body, which reports it
            return _Held(str(err))

    async def tool(**given: Any) -> dict[str, Any] | CallToolResult:
        ctx, approval = given.pop("ctx"), given.pop("approval")
        try:
            return await finish(spec.name, spec.args(given), ctx, approval)
        except (ToolError, CorralError) as err:
            return _failed(spec.name, str(err))

    resolver = _signed(gate, f"gate_{spec.name}", [*params, _keyword("ctx", Context)], Any)
    outcome = Annotated[_Outcome, Resolve(resolver)]
    return _signed(tool, f"{spec.name}_tool",
                   [*params, _keyword("ctx", Context), _keyword("approval", outcome)],
                   dict[str, Any])


class _Calls:
    """The steps every tool call takes, for one server's principals."""

    def __init__(self, principals: Principals, tokens: Authenticator | None,
                 elicitation: bool, held: Held | None = None) -> None:
        self.principals = principals
        self.tokens = tokens
        self.elicitation = elicitation
        self.held = held

    def principal_of(self, ctx: Context) -> str:
        headers = ctx.headers
        if headers is None or self.tokens is None:
            return STDIO
        name = self.tokens.principal(headers.get("authorization"))
        if name is None:  # the HTTP middleware refuses these before they get here
            raise ToolError("not authenticated")
        return name

    async def decide(self, tool: str, args: dict[str, Any], ctx: Context) -> Any:
        """The resolver: go ahead, held (denied or pending), or ask by elicitation."""
        tools = self.principals.tools(self.principal_of(ctx))

        def check() -> _Go | _Held | _Ask | tuple[Gate, Any]:
            gate = tools.gate(tool, args)
            if self.held is not None:  # decided on the server only, never here
                return _Ask(gate) if gate.needs_approval else _Go(gate)
            if tools.authorize(tool, args, gate):
                return _Go(gate)
            denied = tools.denial(tool, args)
            if denied is not None:
                return _Held(denied_message(denied, tool))
            return gate, tools.hold(tool, args, gate)

        # a CorralError (the sandbox could not be set up) is the call's reason: see _tool_function
        outcome = await anyio.to_thread.run_sync(check)
        if isinstance(outcome, _Go | _Held | _Ask):
            return outcome
        gate, approval = outcome
        caps = ctx.client_capabilities
        if self.elicitation and caps is not None and caps.elicitation is not None:
            return Elicit(
                f"corral: allow {tool} `{gate.summary}`? It needs approval: {gate.reason}. "
                f"(approval {approval.id}; workspace {tools.workspace})",
                ApprovalForm,
            )
        return _Held(pending_message(approval, tool))

    async def finish(self, tool: str, args: dict[str, Any], ctx: Context,
                     outcome: ElicitationResult[Any]) -> dict[str, Any]:
        """The tool body: settle the approval outcome, then run the call."""
        principal = self.principal_of(ctx)
        tools = self.principals.tools(principal)
        by = f"{principal} via MCP elicitation (server user {current_user()})"
        if isinstance(outcome, CancelledElicitation):
            raise await self._still_pending(tools, tool, args)
        if not isinstance(outcome, AcceptedElicitation):
            raise await self._refused(tools, tool, args, by, outcome.action)
        data = outcome.data
        if isinstance(data, _Held):
            raise ToolError(data.message)
        if isinstance(data, _Ask):
            await self._ask(principal, tools, tool, args, data.gate, ctx)
            return await self._run(tools, tool, args, data.gate, ctx)
        gate = await self._form(tools, tool, args, by, data) \
            if isinstance(data, ApprovalForm) else data.gate
        return await self._run(tools, tool, args, gate, ctx)

    async def _ask(self, principal: str, tools: Tools, tool: str, args: dict[str, Any],
                   gate: Gate, ctx: Context) -> None:
        """Hold the call with ``held`` until decided; raise the refusal unless approved."""
        held = self.held
        assert held is not None
        started = time.monotonic()

        def waiting(note: str) -> None:
            # progress while waiting keeps the client's request alive and says what to do
            anyio.from_thread.run(ctx.report_progress, time.monotonic() - started, None, note)

        def ask() -> str | None:
            return held.ask(principal, tools, tool, args, gate, waiting)

        refused = await anyio.to_thread.run_sync(ask)
        if refused is not None:
            raise ToolError(refused)

    @staticmethod
    async def _still_pending(tools: Tools, tool: str, args: dict[str, Any]) -> ToolError:
        """A cancel decides nothing: the call stays pending for another approver."""
        def pending() -> str:
            return pending_message(tools.hold(tool, args, tools.gate(tool, args)), tool)

        message = await anyio.to_thread.run_sync(pending)
        return ToolError("corral: the approval prompt was cancelled, so nothing was decided; "
                        + message.removeprefix("corral: "))

    @staticmethod
    async def _refused(tools: Tools, tool: str, args: dict[str, Any], by: str,
                       action: str) -> ToolError:
        """An explicit decline is recorded as a denial."""
        def refuse() -> None:
            pending = tools.hold(tool, args, tools.gate(tool, args))
            tools.store.decide(pending.id, approve=False, by=by, reason=action)

        await anyio.to_thread.run_sync(refuse)
        return ToolError(f"the user did not approve this {tool} call ({action})")

    @staticmethod
    async def _form(tools: Tools, tool: str, args: dict[str, Any], by: str,
                    form: ApprovalForm) -> Gate:
        """Record the human's answer on the pending approval; a yes is consumed like a grant."""
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
        return gate

    @staticmethod
    async def _run(tools: Tools, tool: str, args: dict[str, Any], gate: Gate,
                   ctx: Context) -> dict[str, Any]:
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


def build_server(
    principals: Principals,
    *,
    tokens: Authenticator | None = None,
    elicitation: bool = True,
    held: Held | None = None,
) -> MCPServer:
    """An ``MCPServer`` with the tools of ``TOOLS``, serving ``principals``."""
    server: MCPServer = MCPServer(name="corral", instructions=INSTRUCTIONS, log_level="WARNING")
    calls = _Calls(principals, tokens, elicitation, held)
    for spec in TOOLS:
        server.tool(name=spec.name, description=spec.description)(
            _tool_function(spec, calls.decide, calls.finish))
    return server
