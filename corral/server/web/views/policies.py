"""Policies: per project and org-mandatory, versions with diffs, an editor that validates as
you type (htmx POST, the loader's own ``file:line`` messages), push, and "explain" a URL
against the project's resolved policy.

Invariants: validation and push use ``corral.server.policies`` (the same loader and
composition check as the API and launchers), so the editor can never accept what a push would
refuse. Validation changes nothing; push needs ``POLICY_WRITE`` (``ORG_POLICY_WRITE`` for the
org) with step-up. Versions are read-only.
"""

from __future__ import annotations

import difflib
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, Form, Query
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from corral.policy.errors import PolicyError
from corral.policy.load import load_policy_text
from corral.server import policies
from corral.server.admin_log import record
from corral.server.authz import Permission
from corral.server.errors import ApiError
from corral.server.models import PolicyVersion, Project
from corral.server.web.ui import Viewer, make_router, not_found, page, partial, viewer

__all__ = ["router"]

router = make_router()
Filename = Form("policy.yaml", pattern=r"^[A-Za-z0-9._-]{1,200}$")
PolicyText = Form("", max_length=policies.MAX_POLICY)


@router.get("/policies", response_class=HTMLResponse)
def index(v: Viewer = Depends(viewer)) -> HTMLResponse:
    rows = []
    for project in v.projects():
        rows.append({"project": project,
                     "attached": policies.attached(v.session, policies.project_scope(project))})
    org = policies.attached(v.session, "org")
    return page(v, "ui/policies.html", "policies", rows=rows, org=org)


def _scope(v: Viewer, name: str, write: bool = False) -> tuple[str, Project | None]:
    if name == "org":
        v.allow(Permission.ORG_POLICY_READ)
        if write:
            v.allow_change(Permission.ORG_POLICY_WRITE)
        return "org", None
    project = v.project(name, Permission.POLICY_READ)
    if write:
        v.allow_change(Permission.POLICY_WRITE, project.team_id)
    return policies.project_scope(project), project


def _versions(v: Viewer, scope: str) -> list[PolicyVersion]:
    return list(v.session.scalars(select(PolicyVersion).where(PolicyVersion.scope == scope)
                                  .order_by(PolicyVersion.name, PolicyVersion.version.desc())))


@router.get("/policies/{name}", response_class=HTMLResponse)
def scope_page(name: str, v: Viewer = Depends(viewer)) -> HTMLResponse:
    scope, project = _scope(v, name)
    attached = policies.attached(v.session, scope)
    resolved: dict[str, Any] = {}
    if project is not None:
        try:
            versions, rp = policies.resolve_project(v.session, project)
            resolved = {"digest": rp.digest, "versions": versions}
        except PolicyError as err:
            resolved = {"error": "; ".join(err.problems)}
    can_write = v.can(Permission.ORG_POLICY_WRITE if project is None else Permission.POLICY_WRITE,
                      project.team_id if project else None)
    first = attached[0] if attached else None
    return page(v, "ui/policy.html", "policies", name=name, project=project, attached=attached,
                versions=_versions(v, scope), resolved=resolved, can_write=can_write,
                draft=first.text if first else STARTER, filename=first.filename if first
                else "policy.yaml")


STARTER = "name: my-policy\negress: []\n"


@router.get("/policies/{name}/diff", response_class=HTMLResponse)
def diff(name: str, policy: str = Query(max_length=100), version: int = Query(ge=1),
         v: Viewer = Depends(viewer)) -> HTMLResponse:
    scope, _ = _scope(v, name)
    rows = {r.version: r for r in v.session.scalars(select(PolicyVersion).where(
        PolicyVersion.scope == scope, PolicyVersion.name == policy,
        PolicyVersion.version.in_([version - 1, version])))}
    new = rows.get(version)
    if new is None:
        raise not_found()
    old = rows.get(version - 1)
    lines = list(difflib.unified_diff((old.text if old else "").splitlines(),
                                      new.text.splitlines(),
                                      f"{policy} v{version - 1}" if old else "(none)",
                                      f"{policy} v{version}", lineterm="", n=3))
    marked = [("add" if ln.startswith("+") and not ln.startswith("+++") else
               "del" if ln.startswith("-") and not ln.startswith("---") else
               "hunk" if ln.startswith("@@") else "", ln) for ln in lines]
    return page(v, "ui/diff.html", "policies", name=name, policy=policy, new=new, old=old,
                lines=marked)


def problems_of(v: Viewer, scope: str, project: Project | None, filename: str,
                text: str) -> list[str]:
    """What a push of ``text`` would be refused for (empty: it would be accepted)."""
    try:
        loaded = load_policy_text(filename, text)
    except PolicyError as err:
        return list(err.problems)
    del loaded
    try:
        # The composition check of a real push, rolled back: nothing is stored.
        policies.push(v.session, scope=scope, project=project, filename=filename, text=text,
                      author=v.principal.actor)
    except ApiError as err:
        return [err.message]
    finally:
        v.session.rollback()
    return []


@router.post("/policies/{name}/validate", response_class=HTMLResponse)
def validate(name: str, filename: str = Filename, text: str = PolicyText,
             v: Viewer = Depends(viewer)) -> HTMLResponse:
    scope, project = _scope(v, name)
    return partial("ui/_problems.html", problems=problems_of(v, scope, project, filename, text))


@router.post("/policies/{name}/push", response_class=HTMLResponse)
def push(name: str, filename: str = Filename, text: str = PolicyText,
         v: Viewer = Depends(viewer)) -> HTMLResponse:
    scope, project = _scope(v, name, write=True)
    try:
        row = policies.push(v.session, scope=scope, project=project, filename=filename,
                            text=text, author=v.principal.actor)
    except ApiError as err:
        v.session.rollback()
        return partial("ui/_problems.html", problems=err.message.split("; "), status=422)
    record(v.session, v.principal.actor, "policy.push",
           f"{project.name if project else 'org'}/{row.name}@{row.version}",
           team_id=project.team_id if project else None, digest=row.digest, via="web")
    v.session.commit()
    return partial("ui/_notice.html", kind="ok",
                   text=f"pushed {row.name} version {row.version} (sha256 {row.digest[:12]}…)")


@router.get("/policies/{name}/explain", response_class=HTMLResponse)
def explain(name: str, url: str = Query("", max_length=2000),
            method: str = Query("GET", pattern=r"^[A-Za-z]{1,16}$"),
            v: Viewer = Depends(viewer)) -> HTMLResponse:
    _, project = _scope(v, name)
    if project is None:
        raise not_found()
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        parts, port = None, 0
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return partial("ui/_explain.html", error="give a full http:// or https:// URL")
    try:
        _, rp = policies.resolve_project(v.session, project)
    except PolicyError as err:
        return partial("ui/_explain.html", error="; ".join(err.problems))
    lines: list[dict[str, str]] = []
    if parts.scheme == "https":
        conn = rp.decide_connect(parts.hostname, port)
        lines.append({"what": f"CONNECT {parts.hostname}:{port}", "action": str(conn.action),
                      "origin": str(conn.origin), "message": conn.message})
    if parts.scheme == "http" or lines[0]["action"] == "inspect":
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        decision = rp.decide_request(parts.hostname, port, method.upper(), target)
        line = {"what": f"{method.upper()} {url}", "action": str(decision.action),
                "origin": str(decision.origin), "message": decision.message}
        binding = rp.credentials_for(decision)
        if binding is not None:
            line["credential"] = f"injects {binding.name} into {binding.header}"
        lines.append(line)
    return partial("ui/_explain.html", lines=lines, error=None)
