"""The tools as a service: policy check, approval gate, execution in the sandbox, audit.

Transport-agnostic and synchronous; ``corral.mcp`` adapts it to MCP (and runs it off the event
loop). Every call follows the same path:

    gate(tool, args)   -> does this exact call need a human? (exec.mode, files.approval, reads
                          outside the workspace)
    authorize(...)     -> an "always" rule or a live single-use grant lets it through;
                          otherwise the caller elicits or holds it as a pending approval
    run(...)           -> executed INSIDE the sandbox by the resident executor

Invariants:
- A call that needs approval never reaches the executor without a matching grant or an
  "always" rule for its exact arguments under the current policy digest.
- ``exec.mode: allow`` is the only way a command runs without approval other than the
  allowlist checker proving every simple command in it allowed.
- Each call emits one ``tool.call`` audit event with its outcome; file contents and command
  outputs are not copied into the audit trail, only their sizes.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from corral.policy.types import ExecConfig, FilesConfig
from corral.tools.approvals import Approval, ApprovalStore, AuditSink, NullAudit
from corral.tools.cmdcheck import check_command
from corral.tools.executor_client import ToolFailure
from corral.tools.session import ShellSession

__all__ = [
    "SANDBOX_WORKSPACE",
    "TOOLS",
    "Gate",
    "ToolPolicy",
    "Tools",
    "denied_message",
    "pending_message",
]

SANDBOX_WORKSPACE = "/workspace"
TOOLS = ("exec", "read", "write", "edit", "glob", "grep", "fetch")
_WRITES = frozenset({"write", "edit"})
_READS = frozenset({"read", "glob", "grep"})


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """What the tools need from a resolved policy."""

    exec: ExecConfig
    files: FilesConfig
    digest: str
    idle: float | None = 30 * 60.0

    @classmethod
    def from_resolved(cls, resolved: Any) -> ToolPolicy:
        return cls(exec=resolved.exec, files=resolved.files, digest=str(resolved.digest),
                   idle=resolved.limits.idle)


@dataclass(frozen=True, slots=True)
class Gate:
    """Whether a call needs approval, why, what a human is shown, and its "always" scope."""

    needs_approval: bool
    reason: str
    summary: str
    scope: str
    outside: bool = False


def _outside(path: str) -> bool:
    full = posixpath.normpath(posixpath.join(SANDBOX_WORKSPACE, path))
    return full != SANDBOX_WORKSPACE and not full.startswith(SANDBOX_WORKSPACE + "/")


def _summary(tool: str, args: Mapping[str, Any]) -> str:
    if tool == "exec":
        return str(args.get("command"))
    if tool in ("read", "write", "edit"):
        return str(args.get("path"))
    if tool in ("glob", "grep"):
        return f"{args.get('pattern')} in {args.get('path') or '.'}"
    if tool == "fetch":
        return f"{args.get('method') or 'GET'} {args.get('url')}"
    return tool


def pending_message(approval: Approval, tool: str) -> str:
    """What the client (and so the agent and its human) is told about a held call."""
    return (
        f"corral: this {tool} call needs human approval ({approval.why}). It is pending as "
        f"approval {approval.id}, expiring in {max(0, int(approval.expires - time.time()))}s. "
        f"A human can inspect it with `corral approvals show {approval.id}`, then run "
        f"`corral approvals approve {approval.id}` (add --always to always "
        f"allow this command here) or `corral approvals deny {approval.id} --reason ...`. "
        f"Then retry exactly the same call with the same arguments; other arguments need "
        f"their own approval."
    )


def denied_message(approval: Approval, tool: str) -> str:
    why = f": {approval.reason}" if approval.reason else ""
    return (
        f"corral: this {tool} call was denied by {approval.decided_by} (approval {approval.id})"
        f"{why}. Do not retry it unchanged; ask the user how to proceed."
    )


class Tools:
    def __init__(
        self,
        policy: ToolPolicy,
        session: ShellSession,
        store: ApprovalStore,
        *,
        workspace: str,
        audit: AuditSink | None = None,
        principal: str = "local",
    ) -> None:
        self.policy = policy
        self.session = session
        self.store = store
        self.workspace = workspace  # host identity of the workspace, scopes "always" rules
        self.audit: AuditSink = audit or NullAudit()
        self.principal = principal

    # -- the gate ----------------------------------------------------------------------------

    def gate(self, tool: str, args: Mapping[str, Any]) -> Gate:
        summary = _summary(tool, args)
        scope = summary if tool == "exec" else ""
        if tool == "exec":
            mode = self.policy.exec.mode
            if mode == "allow":
                return Gate(False, "exec.mode is allow", summary, scope)
            if mode == "approve":
                return Gate(True, "exec.mode is approve", summary, scope)
            cwd = posixpath.join(SANDBOX_WORKSPACE, str(args.get("cwd") or "."))
            verdict = check_command(str(args.get("command", "")), self.policy.exec.allow, cwd=cwd)
            return Gate(not verdict.allowed, verdict.reason, summary, scope)
        approval = self.policy.files.approval
        if tool in _READS or tool in _WRITES:
            path = str(args.get("path") or ".")
            if tool in _READS and _outside(path):
                return Gate(True, "reading outside the workspace", summary, scope, outside=True)
            if approval == "all" or (approval == "writes" and tool in _WRITES):
                return Gate(True, f"files.approval is {approval}", summary, scope)
        return Gate(False, "no approval needed", summary, scope)

    def authorize(self, tool: str, args: Mapping[str, Any], gate: Gate) -> bool:
        """True if the call may run now (no approval needed, an always rule, or a grant)."""
        if not gate.needs_approval:
            return True
        if tool == "exec" and self.store.allowed_always(
            tool, gate.scope, self.workspace, self.policy.digest
        ):
            return True
        if tool != "exec" and self.store.allowed_always(
            tool, _canon(args), self.workspace, self.policy.digest
        ):
            return True
        grant = self.store.consume(tool, args, self.policy.digest, self.principal,
                                   workspace=self.workspace)
        return grant is not None

    def denial(self, tool: str, args: Mapping[str, Any]) -> Approval | None:
        """A recent human denial of exactly this call (it is not asked again meanwhile)."""
        return self.store.recent_denial(tool, args, self.policy.digest, self.principal)

    def hold(self, tool: str, args: Mapping[str, Any], gate: Gate) -> Approval:
        """The pending approval for this exact call (created or found)."""
        return self.store.request(
            tool, args, policy_digest=self.policy.digest, workspace=self.workspace,
            summary=gate.summary, why=gate.reason,
            scope=gate.scope if tool == "exec" else _canon(args), principal=self.principal,
        )

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        tool: str,
        args: Mapping[str, Any],
        *,
        gate: Gate | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Execute an authorized call inside the sandbox. Raises ``ToolFailure`` on refusal."""
        if tool not in TOOLS:
            raise ToolFailure(f"unknown tool {tool!r}")
        request = dict(args)
        if gate is not None and gate.outside:
            request["outside_ok"] = True
        timeout = min(max(float(args.get("timeout") or 120), 0.1), 86400.0) + 30
        started = time.monotonic()
        ok = False
        detail = ""
        try:
            result = self.session.call(tool, request, timeout=timeout, on_progress=on_progress)
            ok = True
            if tool == "exec":
                detail = f"exit {result.get('exit_code')}"
            elif tool == "fetch":
                detail = f"status {result.get('status')}"
            return result
        except ToolFailure as err:
            detail = str(err)
            raise
        finally:
            self.audit.emit(
                "tool.call", tool=tool, args=_audit_args(tool, args), ok=ok,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                principal=self.principal, detail=detail[:500],
            )


def _canon(args: Mapping[str, Any]) -> str:
    from corral.tools.approvals import canonical

    return canonical(dict(args))


def _audit_args(tool: str, args: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in args.items():
        if key in ("content", "old_string", "new_string", "body"):
            out[key + "_bytes"] = len(str(value).encode())
        elif isinstance(value, str | int | float | bool) or value is None:
            out[key] = value
        else:
            out[key] = str(value)
    return out
