"""Authorization: one function, ``decide``, from (principal, permission, resource's team).

Invariants:
- Every ``/api/v1`` route declares exactly one ``Permission`` through ``require`` (a test walks
  the app's route table), so a route cannot forget to check.
- Scopes: ``org`` permissions need an org-wide role; ``team`` permissions need a role in the
  resource's team (org-wide roles count in every team); ``run`` permissions need the sandbox
  token of that very run; ``any`` routes (whoami, listings) serve every authenticated
  principal and filter what they show by ``visible_teams``.
- A principal with no role at all in a resource's team gets 404, exactly as for a resource that
  does not exist (no probing names across teams); one with a role that is too low gets 403.
- Sandbox tokens reach only ``run`` routes of their own run: another run's route is a 403
  that says so (``require`` checks the path before resolving it, so it tells nothing about
  the other run); every other route is the outsider's 404. A user's stored login token cannot
  use a ``step_up`` permission (policies, credentials, memberships, budgets, approvals): an
  agent running as that user must not widen its own reach.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from corral.server.errors import ApiError

__all__ = ["Permission", "Principal", "Role", "decide", "other_run", "visible_teams"]


class Role(enum.IntEnum):
    VIEWER = 1
    MEMBER = 2
    ADMIN = 3
    OWNER = 4

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r} (owner, admin, member, viewer)") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class _Spec(NamedTuple):
    scope: str  # org | team | run | any
    role: Role
    step_up: bool = False


class Permission(enum.Enum):
    WHOAMI = _Spec("any", Role.VIEWER)
    LIST = _Spec("any", Role.VIEWER)  # listings filtered by visible_teams
    TEAM_CREATE = _Spec("org", Role.ADMIN, True)
    TEAM_READ = _Spec("team", Role.VIEWER)
    MEMBER_MANAGE = _Spec("team", Role.ADMIN, True)
    PROJECT_CREATE = _Spec("team", Role.ADMIN, True)
    PROJECT_READ = _Spec("team", Role.VIEWER)
    AGENT_CREATE = _Spec("team", Role.ADMIN)
    POLICY_READ = _Spec("team", Role.VIEWER)
    POLICY_WRITE = _Spec("team", Role.ADMIN, True)
    ORG_POLICY_READ = _Spec("org", Role.VIEWER)
    ORG_POLICY_WRITE = _Spec("org", Role.ADMIN, True)
    CREDENTIAL_READ = _Spec("team", Role.VIEWER)  # names and bindings, never values
    CREDENTIAL_WRITE = _Spec("team", Role.ADMIN, True)
    RUN_START = _Spec("team", Role.MEMBER)
    RUN_READ = _Spec("team", Role.VIEWER)
    RUN_KILL = _Spec("team", Role.ADMIN)
    RUN_REPORT = _Spec("run", Role.VIEWER)  # heartbeat, end, audit ingest: the run's own token
    APPROVAL_DECIDE = _Spec("team", Role.ADMIN, True)  # never a sandbox token
    BUDGET_WRITE = _Spec("team", Role.ADMIN, True)  # a raised budget widens what agents spend
    ORG_BUDGET_WRITE = _Spec("org", Role.ADMIN, True)
    SPEND_READ = _Spec("team", Role.VIEWER)
    TOKEN_SELF = _Spec("any", Role.VIEWER)  # list and revoke the caller's own tokens
    USER_MANAGE = _Spec("org", Role.ADMIN, True)  # disable a user (revokes every token)

    @property
    def spec(self) -> _Spec:
        value = self.value
        assert isinstance(value, _Spec)
        return value


@dataclass(frozen=True)
class Principal:
    actor: str  # who, in audit records: a user's email or "token:NAME"
    kind: str  # service | user | sandbox
    token_id: int | None = None
    org_role: Role | None = None
    team_roles: dict[int, Role] = field(default_factory=dict)
    run_id: str | None = None
    step_up: bool = False
    # The human behind a user principal (a sandbox's launching human, later), for every event
    # the server stores: the IdP subject and the email.
    subject: str | None = None
    email: str | None = None

    def role_in(self, team_id: int | None) -> Role | None:
        team = self.team_roles.get(team_id) if team_id is not None else None
        roles = [r for r in (self.org_role, team) if r is not None]
        return max(roles) if roles else None


def visible_teams(principal: Principal) -> set[int] | None:
    """Team ids whose resources ``principal`` may list; ``None`` means all of them."""
    if principal.kind == "sandbox":
        return set()
    if principal.org_role is not None:
        return None
    return set(principal.team_roles)


def other_run(principal: Principal) -> ApiError:
    return ApiError(403, "wrong_run", f"this sandbox token belongs to run {principal.run_id}; "
                    "it reports for that run only")


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no such resource")


def decide(principal: Principal, permission: Permission, *, team_id: int | None = None,
           run_id: str | None = None) -> None:
    """Return if allowed; raise ``ApiError`` 404 (outside the team) or 403 otherwise."""
    spec = permission.spec
    if spec.scope == "run":
        if principal.kind != "sandbox" or run_id is None:
            raise _not_found()
        if principal.run_id != run_id:
            raise other_run(principal)
        return
    if principal.kind == "sandbox":
        raise _not_found()
    if spec.scope == "any":
        return
    if spec.scope == "org":
        role = principal.org_role
        if role is None or role < spec.role:
            raise ApiError(403, "forbidden", f"needs the org-wide {spec.role.label} role")
    else:
        role = principal.role_in(team_id)
        if role is None:
            raise _not_found()
        if role < spec.role:
            raise ApiError(403, "forbidden", f"needs the {spec.role.label} role in this team")
    if spec.step_up and principal.kind == "user" and not principal.step_up:
        raise ApiError(403, "step_up_required", "this change needs a fresh login (step-up): "
                       "a login token cannot change what an agent could use to widen its reach")
