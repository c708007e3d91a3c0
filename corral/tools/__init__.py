"""Sandboxed tools for Mode 1 (exec, read, write, edit, glob, grep, fetch) and approvals.

Public API::

    verdict = check_command("git status && pytest -q", allow=["git status", "pytest *"])
    store = ApprovalStore(audit=sink)                 # state_dir()/approvals, root-only
    provider = SandboxProvider(spec, opener=opener)  # corral.runtime.proxied_opener for egress
    session = ShellSession(provider, idle=resolved_policy.limits.idle)
    tools = Tools(ToolPolicy.from_resolved(resolved_policy), session, store,
                  workspace=str(host_workspace), audit=sink, principal="stdio")
    gate = tools.gate("exec", args)                   # needs approval? why?
    if tools.authorize("exec", args, gate):           # always-rule or a live grant
        result = tools.run("exec", args, gate=gate, on_progress=print)
    else:
        pending = tools.hold("exec", args, gate)      # decided by `corral approvals`

Submodules load lazily, so ``corral approvals`` does not import tree-sitter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.tools.approvals import (
        Approval,
        ApprovalStore,
        AuditSink,
        NullAudit,
        StandingRule,
        current_user,
    )
    from corral.tools.cmdcheck import CommandChecker, Verdict, check_command
    from corral.tools.executor_client import Executor, ExecutorGone, ToolFailure, executor_argv
    from corral.tools.provision import Opened, SandboxProvider
    from corral.tools.service import Gate, ToolPolicy, Tools, denied_message, pending_message
    from corral.tools.session import ShellSession

__all__ = [
    "Approval",
    "ApprovalStore",
    "AuditSink",
    "CommandChecker",
    "Executor",
    "ExecutorGone",
    "Gate",
    "NullAudit",
    "Opened",
    "SandboxProvider",
    "ShellSession",
    "StandingRule",
    "ToolFailure",
    "ToolPolicy",
    "Tools",
    "Verdict",
    "args_digest",
    "check_command",
    "current_user",
    "denied_message",
    "executor_argv",
    "pending_message",
]

__getattr__ = lazy_exports("corral.tools", {
    "Approval": "approvals", "ApprovalStore": "approvals", "AuditSink": "approvals",
    "NullAudit": "approvals", "StandingRule": "approvals", "current_user": "approvals",
    "args_digest": "approvals",
    "CommandChecker": "cmdcheck",
    "Verdict": "cmdcheck",
    "check_command": "cmdcheck", "Executor": "executor_client",
    "ExecutorGone": "executor_client", "ToolFailure": "executor_client",
    "executor_argv": "executor_client",
    "SandboxProvider": "provision", "Opened": "provision", "Gate": "service",
    "ToolPolicy": "service", "Tools": "service", "denied_message": "service",
    "pending_message": "service", "ShellSession": "session",
})
