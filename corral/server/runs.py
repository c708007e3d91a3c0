"""Runs: register (a run id and its sandbox token), heartbeat, end, kill, list.

Invariants:
- A run's sandbox token is issued at registration and only then (the secret is returned once,
  stored as a hash): kind ``sandbox``, bound to the run and to ``SANDBOX_AUDIENCE``, living
  ``SANDBOX_TTL`` past the last heartbeat. It carries no role in any team: it reaches only
  its own run's ``run`` routes (``authz.decide``).
- A heartbeat renews the token and answers with the kill request, if one is pending, so a
  launcher learns of a kill within one heartbeat.
- Ending a run revokes every token of that run in the same transaction that marks it ended,
  and anchors the run's chain head in the server ledger (``ledger.anchor``): there is no
  moment at which a run is ended but its token still works.
- A run that stopped heartbeating for longer than ``SANDBOX_TTL`` is shown as ``lost`` (its
  token has expired); nothing is rewritten for that.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from corral.server.admin_log import record
from corral.server.errors import ApiError
from corral.server.ledger import anchor
from corral.server.models import Agent, Project, Run, Token, utcnow
from corral.server.tokens import SANDBOX_AUDIENCE, SANDBOX_TTL, issue

__all__ = ["RUN_ID_RE", "end", "heartbeat", "kill", "record_push", "register", "run_json"]

RUN_ID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


def run_json(run: Run, project: str, agent: str | None) -> dict[str, Any]:
    status = run.status
    if status == "running" and utcnow() - run.last_heartbeat_at > SANDBOX_TTL:
        status = "lost"
    return {"id": run.id, "project": project, "agent": agent, "human": run.human,
            "host": run.host, "sandbox": run.sandbox, "policy_digest": run.policy_digest,
            "command": run.command or [], "status": status, "exit_status": run.exit_status,
            "end_reason": run.end_reason, "started_at": run.started_at.isoformat(),
            "ended_at": run.ended_at.isoformat() if run.ended_at else None,
            "last_heartbeat_at": run.last_heartbeat_at.isoformat(), "events": run.events,
            "head": run.head, "kill_requested": run.kill_requested,
            "kill_reason": run.kill_reason}


def register(session: Session, project: Project, *, actor: str, human: str, host: str,
             sandbox: str, policy_digest: str, agent: str | None,
             command: list[str], subject: str | None = None) -> tuple[Run, str]:
    """Add the run and its sandbox token (caller commits); returns the run and the secret.
    ``human`` is the launching human's email (a service token's ``token:NAME``), ``subject``
    their IdP subject when they signed in through SSO."""
    agent_id = None
    if agent is not None:
        row = session.scalar(select(Agent).where(Agent.project_id == project.id,
                                                 Agent.name == agent))
        if row is None:
            raise ApiError(422, "invalid", f"agent: no agent {agent!r} in project "
                           f"{project.name} (corral agent create)")
        agent_id = row.id
    run = Run(id=str(uuid.uuid4()), project_id=project.id, agent_id=agent_id, human=human,
              host=host, sandbox=sandbox, policy_digest=policy_digest, command=command)
    session.add(run)
    session.flush()
    token, secret = issue(session, name=f"run {run.id}", kind="sandbox", role="viewer",
                          ttl=SANDBOX_TTL, created_by=actor, run_id=run.id,
                          audience=SANDBOX_AUDIENCE)
    record(session, actor, "run.register", f"{project.name}/{run.id}", team_id=project.team_id,
           human=human, subject=subject, host=host, agent=agent, policy_digest=policy_digest,
           token_id=token.id)
    return run, secret


def heartbeat(session: Session, run: Run, token_id: int | None) -> dict[str, Any]:
    """Renew the run's token; the answer carries a pending kill request."""
    if run.status != "running":
        raise ApiError(409, "run_ended", f"run {run.id} has ended")
    now = utcnow()
    run.last_heartbeat_at = now
    expires = now + SANDBOX_TTL
    session.execute(update(Token).where(Token.id == token_id, Token.run_id == run.id,
                                        Token.revoked_at.is_(None)).values(expires_at=expires))
    return {"run": run.id, "token_expires_at": expires.isoformat(),
            "kill": {"reason": run.kill_reason or "killed from the server",
                     "by": run.kill_requested_by} if run.kill_requested else None,
            "acked": run.events}


def end(session: Session, run: Run, project: Project, *, actor: str, exit_status: int | None,
        reason: str | None) -> dict[str, Any]:
    """Mark the run ended, revoke its tokens and anchor its head (caller commits)."""
    if run.status != "running":
        raise ApiError(409, "run_ended", f"run {run.id} has already ended")
    now = utcnow()
    run.status, run.ended_at, run.exit_status, run.end_reason = "ended", now, exit_status, reason
    session.execute(update(Token).where(Token.run_id == run.id, Token.revoked_at.is_(None))
                    .values(revoked_at=now))
    entry = anchor(session, run)
    record(session, actor, "run.end", f"{project.name}/{run.id}", team_id=project.team_id,
           exit_status=exit_status, reason=reason, events=run.events, head=run.head,
           ledger=entry.hash)
    return {"run": run.id, "status": run.status, "events": run.events, "head": run.head,
            "ledger": entry.hash}


def record_push(session: Session, run: Run, project: Project, *, actor: str, events: int,
                ended: bool) -> None:
    """A run's leftovers shipped by its human (``corral audit push``): an admin event. The
    run's sandbox tokens are revoked: from here its human reports it, not its launcher."""
    session.execute(update(Token).where(Token.run_id == run.id, Token.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))
    record(session, actor, "audit.push", f"{project.name}/{run.id}", team_id=project.team_id,
           events=events, acked=run.events, ended=ended)


def kill(session: Session, run: Run, project: Project, *, actor: str,
         reason: str | None) -> dict[str, Any]:
    """Ask the run's launcher to stop it (delivered with the next heartbeat)."""
    if run.status != "running":
        raise ApiError(409, "run_ended", f"run {run.id} has already ended")
    run.kill_requested, run.kill_requested_by = True, actor
    run.kill_reason = reason or f"killed from the server by {actor}"
    record(session, actor, "run.kill", f"{project.name}/{run.id}", team_id=project.team_id,
           reason=run.kill_reason)
    return {"run": run.id, "kill_requested": True, "reason": run.kill_reason}
