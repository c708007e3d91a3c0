"""The relay's database work for one request, as few short Core statements (no ORM objects).

``grant`` runs for every relayed request, so what it reads is kept to two statements on one
connection: the token joined with its user, run and project and with the policy attachments
of the org and that project (a row per attachment); the credential row. The ``credential.inject``
event (and the row's ``last_used_at``, at most once a minute) is written and committed on that
same connection.

Invariants:
- Nothing here decides: ``live`` only says whether a token row passes every check of
  ``tokens.find`` plus the relay's own (sandbox kind and audience, this run, run running); a
  row that does not is handed back to the caller, which refuses through ``find`` itself, so
  every refusal keeps its exact reason and its ``auth.refused`` record.
- Every statement reads the database as it is now (no cache of rows or decisions): a revoked
  token, an ended run or a pushed policy is seen by the next request.
- The inject event is committed before ``grant`` returns (SQLite writers queue on
  ``Database.writer()``), so the record is always ahead of the secret's use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, String, bindparam, cast, insert, literal, or_, select, update

from corral.server.crypto import Sealed
from corral.server.models import (
    AdminEvent,
    Credential,
    PolicyAttachment,
    PolicyVersion,
    Project,
    Run,
    Token,
    User,
    utcnow,
)
from corral.server.tokens import SANDBOX_AUDIENCE, TOKEN_RE, hash_token

__all__ = ["STAMP_EVERY", "Found", "Who", "credential", "live", "record_inject",
           "token_row", "version_texts"]


class Who(NamedTuple):
    """The run a live sandbox token speaks for."""
    run: str
    human: str
    digest: str  # the policy digest the run registered
    project_id: int
    project: str
    team_id: int


_TOKEN = (select(Token.kind, Token.audience, Token.run_id, Token.revoked_at, Token.expires_at,
                 Token.user_id, User.disabled, Run.status, Run.human, Run.policy_digest,
                 Project.id, Project.name, Project.team_id, PolicyAttachment.scope,
                 PolicyAttachment.version_id)
          .select_from(Token)
          .outerjoin(User, User.id == Token.user_id)
          .outerjoin(Run, Run.id == Token.run_id)
          .outerjoin(Project, Project.id == Run.project_id)
          # the policy versions attached to the org and to the run's project, one row each
          .outerjoin(PolicyAttachment, or_(
              PolicyAttachment.scope == "org",
              PolicyAttachment.scope == literal("p") + cast(Project.id, String)))
          .where(Token.secret_hash == bindparam("hash"))
          .order_by(PolicyAttachment.name))
_CREDENTIAL = select(Credential.id, Credential.ciphertext, Credential.nonce,
                     Credential.wrapped_key, Credential.key_nonce, Credential.kek_id,
                     Credential.last_used_at).where(
    Credential.project_id == bindparam("project"), Credential.name == bindparam("name"))
_INJECT = insert(AdminEvent)
STAMP_EVERY = dt.timedelta(minutes=1)  # ``last_used_at`` to the minute, as tokens keep it
_USED = (update(Credential).where(Credential.id == bindparam("row"))
         .values(last_used_at=bindparam("now")))


def token_row(conn: Connection, secret: str) -> tuple[Sequence[Any] | None, tuple[int, ...]]:
    """The token's row with its user, run and project (None if no such token), and the ids
    of the policy versions in force for that project, in composition order: the org's, then
    the project's, each by attachment name (as ``policies.resolve_project`` composes them).
    One statement: it runs for every relayed request."""
    if not TOKEN_RE.fullmatch(secret):
        return None, ()
    rows = conn.execute(_TOKEN, {"hash": hash_token(secret)}).all()
    if not rows:
        return None, ()
    pairs: list[tuple[Any, Any]] = [(r[-2], r[-1]) for r in rows]
    versions = (tuple(v for s, v in pairs if s == "org")
                + tuple(v for s, v in pairs if s not in (None, "org")))
    first: Sequence[Any] = tuple(rows[0])
    return first[:-2], versions


def live(row: Sequence[Any] | None, run_id: str) -> Who | None:
    """The run, when ``row`` is a live sandbox token of ``run_id`` and the run is running;
    None for anything ``grant`` refuses (it then asks ``tokens.find`` why)."""
    if row is None:
        return None
    (kind, audience, token_run, revoked, expires, user_id, disabled, status, human, digest,
     project_id, project, team_id) = row
    if (kind != "sandbox" or audience != SANDBOX_AUDIENCE or token_run != run_id
            or revoked is not None or expires <= utcnow()
            or (user_id is not None and disabled is not False)
            or status != "running" or project_id is None):
        return None
    return Who(run_id, human, digest, project_id, project, team_id)


def version_texts(conn: Connection, ids: tuple[int, ...]) -> list[tuple[str, str]]:
    """(filename, text) of each version in ``ids``, in that order (versions are immutable)."""
    rows = conn.execute(select(PolicyVersion.id, PolicyVersion.filename, PolicyVersion.text)
                        .where(PolicyVersion.id.in_(ids))).all()
    found = {i: (f, t) for i, f, t in rows}
    return [found[i] for i in ids]


class Found(NamedTuple):
    """A credential row: its id, the sealed value and when it was last stamped as used."""
    id: int
    sealed: Sealed
    last_used: dt.datetime | None


def credential(conn: Connection, project_id: int, name: str) -> Found | None:
    row = conn.execute(_CREDENTIAL, {"project": project_id, "name": name}).first()
    if row is None:
        return None
    return Found(row[0], Sealed(row[1], row[2], row[3], row[4], row[5]), row[6])


def record_inject(conn: Connection, who: Who, found: Found, target: str,
                  **detail: Any) -> None:
    """Add the ``credential.inject`` event (the caller commits): the same row
    ``admin_log.record`` would add (actor the run's human, the project's team). The row's
    ``last_used_at`` is stamped when it is a minute old or more, as a token's is: every use
    is in the events, and a write per request to one hot row would only slow the relay."""
    conn.execute(_INJECT, {"actor": who.human, "action": "credential.inject", "target": target,
                           "team_id": who.team_id, "detail": {"run": who.run, **detail}})
    now = utcnow()
    if found.last_used is None or now - found.last_used >= STAMP_EVERY:
        conn.execute(_USED, {"row": found.id, "now": now})
