"""Policy versions: push to a project or to the org (mandatory), list, pull the resolved one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from corral.server import policies
from corral.server.admin_log import record
from corral.server.api import resolve
from corral.server.api.deps import Access, require
from corral.server.api.schemas import PolicyIn
from corral.server.authz import Permission
from corral.server.models import PolicyVersion

__all__ = ["router"]

router = APIRouter(tags=["policies"])


def version_json(v: PolicyVersion) -> dict[str, Any]:
    return {"name": v.name, "version": v.version, "scope": "org" if v.scope == "org" else
            "project", "filename": v.filename, "digest": v.digest, "author": v.author,
            "created_at": v.created_at.isoformat()}


@router.post("/projects/{project}/policies", status_code=201)
def push_project(body: PolicyIn, access: Access = require(Permission.POLICY_WRITE,
                                                          resolve.project)) -> dict[str, Any]:
    project = access.resource
    row = policies.push(access.session, scope=policies.project_scope(project), project=project,
                        filename=body.filename, text=body.text, author=access.principal.actor)
    record(access.session, access.principal.actor, "policy.push",
           f"{project.name}/{row.name}@{row.version}", team_id=project.team_id, digest=row.digest)
    access.session.commit()
    return version_json(row)


@router.post("/org/policies", status_code=201)
def push_org(body: PolicyIn, access: Access = require(Permission.ORG_POLICY_WRITE)
             ) -> dict[str, Any]:
    row = policies.push(access.session, scope="org", project=None, filename=body.filename,
                        text=body.text, author=access.principal.actor)
    record(access.session, access.principal.actor, "policy.push", f"org/{row.name}@{row.version}",
           digest=row.digest)
    access.session.commit()
    return version_json(row)


@router.get("/org/policies")
def list_org(access: Access = require(Permission.ORG_POLICY_READ)) -> dict[str, Any]:
    return {"policies": [version_json(v) for v in policies.attached(access.session, "org")]}


@router.get("/projects/{project}/policies")
def list_versions(access: Access = require(Permission.POLICY_READ, resolve.project)
                  ) -> dict[str, Any]:
    rows = access.session.scalars(select(PolicyVersion).where(
        PolicyVersion.scope == policies.project_scope(access.resource))
        .order_by(PolicyVersion.name, PolicyVersion.version))
    return {"versions": [version_json(v) for v in rows]}


@router.get("/projects/{project}/policy")
def resolved(access: Access = require(Permission.POLICY_READ, resolve.project)
             ) -> dict[str, Any]:
    """The project's policy: org-mandatory then project policies, as one YAML stream."""
    versions, rp = policies.resolve_project(access.session, access.resource)
    parts = [f"# {'org' if v.scope == 'org' else access.resource.name}/{v.name} "
             f"version {v.version} ({v.filename}, sha256 {v.digest})\n{v.text.rstrip()}\n"
             for v in versions]
    project = access.resource
    # the launcher's offline rule, so that a launch takes one round trip
    info = {"name": project.name, "require_server": project.require_server,
            "max_offline_s": project.max_offline_s}
    return {"project": project.name, "digest": rp.digest, "project_info": info,
            "policies": [version_json(v) for v in versions], "yaml": "---\n".join(parts)}
