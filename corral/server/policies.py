"""Policies on the server: validated by corral's own loader, composed as launchers will.

Invariants:
- An upload is loaded with ``load_policy_text`` (never trusted: no ``env:``/``file:``/``cmd:``
  sources), so a bad one is refused with the loader's own ``file:line: field: message``.
- A project's policy is the org-mandatory policies (by name) then the project's (by name),
  each at its attached version. A push is accepted only if the result still composes, for the
  project (project push) or for every project (org push): a conflict is refused naming both
  rules. Versions are immutable; a push attaches a new one.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.policy.errors import PolicyError
from corral.policy.load import LoadedPolicy, load_policy_text
from corral.policy.resolved import ResolvedPolicy
from corral.server.errors import ApiError
from corral.server.models import PolicyAttachment, PolicyVersion, Project

__all__ = ["attached", "project_scope", "push", "resolve_project", "validate"]

MAX_POLICY = 1024 * 1024


def project_scope(project: Project | int) -> str:
    return f"p{project if isinstance(project, int) else project.id}"


def validate(filename: str, text: str) -> LoadedPolicy:
    if len(text) > MAX_POLICY:
        raise ApiError(413, "too_large", f"{filename}: a policy is at most {MAX_POLICY} bytes")
    try:
        return load_policy_text(filename, text)
    except PolicyError as err:
        raise ApiError(422, "invalid_policy", "; ".join(err.problems)) from None


def attached(session: Session, scope: str) -> list[PolicyVersion]:
    rows = session.execute(
        select(PolicyVersion).join(PolicyAttachment, PolicyAttachment.version_id ==
                                   PolicyVersion.id)
        .where(PolicyAttachment.scope == scope).order_by(PolicyAttachment.name)).scalars()
    return list(rows)


def _compose(versions: list[PolicyVersion]) -> ResolvedPolicy:
    from corral.policy.compose import compose

    return compose([load_policy_text(v.filename, v.text) for v in versions])


def resolve_project(session: Session, project: Project) -> tuple[list[PolicyVersion],
                                                                 ResolvedPolicy]:
    versions = attached(session, "org") + attached(session, project_scope(project))
    return versions, _compose(versions)


def _check(versions: list[PolicyVersion], what: str) -> None:
    try:
        _compose(versions)
    except PolicyError as err:
        raise ApiError(409, "policy_conflict",
                       f"{what}: " + "; ".join(err.problems)) from None


def push(session: Session, *, scope: str, project: Project | None, filename: str, text: str,
         author: str) -> PolicyVersion:
    """Validate, check composition, add version n+1 and attach it (caller commits)."""
    loaded = validate(filename, text)
    last = session.scalar(select(func.max(PolicyVersion.version)).where(
        PolicyVersion.scope == scope, PolicyVersion.name == loaded.name)) or 0
    row = PolicyVersion(scope=scope, project_id=project.id if project else None,
                        name=loaded.name, version=last + 1, filename=filename, text=text,
                        digest=hashlib.sha256(text.encode()).hexdigest(), author=author)

    def replaced(versions: list[PolicyVersion]) -> list[PolicyVersion]:
        return [v for v in versions if v.name != loaded.name]

    if project is not None:
        _check(attached(session, "org") + replaced(attached(session, scope)) + [row],
               f"project {project.name}")
    else:
        org = [*replaced(attached(session, "org")), row]
        for other in session.scalars(select(Project).order_by(Project.name)):
            _check(org + attached(session, project_scope(other)), f"project {other.name}")
    session.add(row)
    session.flush()
    attachment = session.scalar(select(PolicyAttachment).where(
        PolicyAttachment.scope == scope, PolicyAttachment.name == loaded.name))
    if attachment is None:
        session.add(PolicyAttachment(scope=scope, project_id=row.project_id, name=loaded.name,
                                     version_id=row.id))
    else:
        attachment.version_id = row.id
    return row
