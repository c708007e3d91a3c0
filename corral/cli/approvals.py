"""Decide pending tool-call approvals held by `corral mcp`."""

from __future__ import annotations

import datetime
import json

import typer

from corral.cli.checks import approval_id, resource_name
from corral.cli.remote import SERVER_OPT
from corral.render import visible

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)
PROJECT_OPT = typer.Option(None, "--project", callback=resource_name,
                           help="Requests held on corral server for this project.")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command("list")
def list_(
    all_: bool = typer.Option(False, "--all", help="Include decided and expired requests."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    project: str | None = PROJECT_OPT,
    server: str | None = SERVER_OPT,
) -> None:
    """List pending approval requests (ID, tool, what, why, expiry)."""
    if project is not None:
        from corral.cli.remote_runs import approvals_list

        approvals_list(project, all_, server, as_json)
        return
    from corral.tools.approvals import ApprovalStore

    items = ApprovalStore().list(include_decided=all_)
    if as_json:
        for item in items:
            print(json.dumps({
                "id": item.id, "tool": item.tool, "summary": item.summary, "why": item.why,
                "status": item.status, "principal": item.principal, "workspace": item.workspace,
                "expires": item.expires, "decided_by": item.decided_by, "reason": item.reason,
                "args": item.args,
            }))
        return
    if not items:
        print("no pending approvals" if not all_ else "no approvals")
        return
    # Tool, summary, why and arguments come from the agent: shown through visible().
    for item in items:
        line = f"{item.id}  {item.status:<8}  {item.tool:<6}  {item.summary}"
        print(visible(line))
        print(visible(f"          why: {item.why}; from {item.principal}; "
                      f"workspace {item.workspace}"))
        if item.status == "pending":
            print(f"          expires {_when(item.expires)}")
        else:
            print(visible(f"          decided by {item.decided_by} at {_when(item.decided_at)}"
                          + (f": {item.reason}" if item.reason else "")))


@app.command("show")
def show(ident: str = typer.Argument(..., metavar="ID", callback=approval_id)) -> None:
    """Show one request in full: the exact arguments that would run (e.g. a write's content)."""
    from corral.tools.approvals import ApprovalStore

    item = ApprovalStore().get(ident)
    lines = [
        f"approval {item.id}: {item.status}",
        f"tool:      {item.tool}",
        f"why:       {item.why}",
        f"from:      {item.principal}",
        f"workspace: {item.workspace}",
        f"policy:    {item.policy_digest}",
        f"requested: {_when(item.created)}; expires {_when(item.expires)}",
    ]
    if item.decided_by:
        lines.append(f"decided:   by {item.decided_by} at {_when(item.decided_at)}"
                     + (f": {item.reason}" if item.reason else ""))
    lines.append("arguments:")
    # JSON escapes C0 controls itself, not DEL, C1 or bidi controls: each line through visible().
    lines += json.dumps(item.args, indent=2, ensure_ascii=False).splitlines()
    for line in lines:
        print(visible(line))


@app.command("approve")
def approve(
    ident: str = typer.Argument(..., metavar="ID", callback=approval_id),
    reason: str | None = typer.Option(None, "--reason", help="Why; recorded in the audit trail."),
    always: bool = typer.Option(
        False, "--always", help="Always allow this command here: locally, in this workspace "
        "under this policy; with --project, for this project and agent under this policy version."
    ),
    project: str | None = PROJECT_OPT,
    server: str | None = SERVER_OPT,
) -> None:
    """Approve one pending request; the agent retries the same call to run it."""
    if project is not None:
        from corral.cli.remote_runs import approvals_decide

        approvals_decide(project, ident, True, reason, server, always)
        return
    from corral.runtime import approval_store

    with approval_store() as store:
        item = store.decide(ident, approve=True, reason=reason, always=always)
    scope = " (always, for this command here)" if item.always else " (once)"
    print(visible(f"approved {item.id}{scope}: {item.tool} {item.summary}"))


@app.command("deny")
def deny(
    ident: str = typer.Argument(..., metavar="ID", callback=approval_id),
    reason: str | None = typer.Option(None, "--reason", help="Why; shown to the agent."),
    project: str | None = PROJECT_OPT,
    server: str | None = SERVER_OPT,
) -> None:
    """Deny one pending request."""
    if project is not None:
        from corral.cli.remote_runs import approvals_decide

        approvals_decide(project, ident, False, reason, server)
        return
    from corral.runtime import approval_store

    with approval_store() as store:
        item = store.decide(ident, approve=False, reason=reason)
    print(visible(f"denied {item.id}: {item.tool} {item.summary}"))


@app.command("standing")
def standing(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    project: str | None = PROJECT_OPT,
    server: str | None = SERVER_OPT,
) -> None:
    """List the "approve always" decisions in force (ID, tool, command or arguments, where)."""
    if project is not None:
        from corral.cli.remote_runs import approvals_standing

        approvals_standing(project, server, as_json)
        return
    from corral.tools import ApprovalStore

    rules = ApprovalStore().standing()
    if as_json:
        for rule in rules:
            print(json.dumps({"id": rule.id, "tool": rule.tool, "scope": rule.summary,
                              "workspace": rule.workspace, "policy_digest": rule.policy_digest,
                              "created_by": rule.created_by, "created": rule.created}))
        return
    if not rules:
        print("no standing approvals")
        return
    for rule in rules:  # the scope and workspace come from the agent: through visible()
        print(visible(f"{rule.id:>4}  {rule.tool:<6}  {rule.summary}"))
        print(visible(f"      in {rule.workspace} under policy {rule.policy_digest[:12]}; "
                      f"by {rule.created_by} at {_when(rule.created)}"))


@app.command("revoke")
def revoke(
    ident: int = typer.Argument(..., metavar="ID", min=1, max=2**62,
                                help="From `corral approvals standing`."),
    project: str | None = PROJECT_OPT,
    server: str | None = SERVER_OPT,
) -> None:
    """End one "approve always": the next identical call is held for a human again."""
    if project is not None:
        from corral.cli.remote_runs import approvals_revoke

        approvals_revoke(project, ident, server)
        return
    from corral.runtime import approval_store

    with approval_store() as store:
        rule = store.revoke_standing(ident)
    print(visible(f"revoked standing approval {rule.id}: {rule.tool} {rule.summary} "
                  "(the next identical call asks again)"))
