"""Local administration, straight on the database (``corral server token|kek|migrate``).

Invariants: these run as root on the server host only (the caller checks); they print a token
secret once and store only its hash; every change is an admin event with actor ``local:root``;
``rotate_kek`` rewraps every data key in one transaction, so a failure leaves the old KEK valid
for every row, and installs the new key as the KEK file only after the database committed
(the old one is kept beside it as ``.old``). Servers read the KEK file on every credential
operation, so they pick the new key up without a restart.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select

from corral.server.admin_log import record
from corral.server.authz import Role
from corral.server.config import ServerConfig
from corral.server.crypto import Kek, KekError, Sealed, load_kek
from corral.server.db import Database
from corral.server.models import Credential, Team, Token, utcnow
from corral.server.tokens import issue

__all__ = ["create_token", "list_tokens", "revoke_token", "rotate_kek"]

ACTOR = "local:root"


def create_token(db: Database, *, name: str, role: str, team: str | None,
                 ttl: dt.timedelta) -> str:
    Role.parse(role)
    with db.session() as session:
        team_id = None
        if team is not None:
            row = session.scalar(select(Team).where(Team.name == team))
            if row is None:
                raise KekError(f"no team {team!r}")  # a CorralError: one line, exit 1
            team_id = row.id
        token, secret = issue(session, name=name, kind="service", role=role, ttl=ttl,
                              created_by=ACTOR, team_id=team_id)
        record(session, ACTOR, "token.create", f"token {token.id} ({name})", team_id=team_id,
               role=role, expires_at=token.expires_at.isoformat())
    return secret


def list_tokens(db: Database) -> list[dict[str, Any]]:
    with db.session() as session:
        teams = {i: n for i, n in session.execute(select(Team.id, Team.name))}
        now = utcnow()
        out = []
        for t in session.scalars(select(Token).where(Token.kind != "sandbox").order_by(Token.id)):
            state = "revoked" if t.revoked_at else ("expired" if t.expires_at <= now else "live")
            out.append({"id": t.id, "name": t.name, "kind": t.kind, "role": t.role,
                        "team": teams.get(t.team_id) if t.team_id else None, "state": state,
                        "expires_at": t.expires_at.isoformat(timespec="seconds"),
                        "last_used_at": t.last_used_at.isoformat(timespec="seconds")
                        if t.last_used_at else None})
        return out


def revoke_token(db: Database, token_id: int) -> bool:
    with db.session() as session:
        token = session.get(Token, token_id)
        if token is None:
            return False
        if token.revoked_at is None:
            token.revoked_at = utcnow()
            record(session, ACTOR, "token.revoke", f"token {token.id} ({token.name})",
                   team_id=token.team_id)
        return True


def rotate_kek(db: Database, config: ServerConfig, new_key_file: Path) -> int:
    """Rewrap every data key under the KEK in ``new_key_file``; then it becomes the KEK."""
    old = load_kek(config.kek_path())
    new: Kek = load_kek(new_key_file)
    if new.id == old.id:
        raise KekError("the new key is the current KEK")
    with db.session() as session:
        rows = list(session.scalars(select(Credential)))
        for row in rows:
            sealed = Sealed(row.ciphertext, row.nonce, row.wrapped_key, row.key_nonce, row.kek_id)
            rewrapped = old.rewrap(row.project_id, row.name, sealed, new)
            row.wrapped_key, row.key_nonce, row.kek_id = (rewrapped.wrapped_key,
                                                          rewrapped.key_nonce, rewrapped.kek_id)
        record(session, ACTOR, "kek.rotate", f"{old.id} -> {new.id}", credentials=len(rows))
    _install_key(new_key_file, config.kek_path())
    return len(rows)


def _install_key(source: Path, target: Path) -> None:
    """Atomically make ``target`` hold the key in ``source`` (0600); the old one is kept as
    ``target.old`` so a backup taken before the rotation can still be opened."""
    data = source.read_bytes()
    tmp = target.with_name(target.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if target.exists():
        os.replace(target, target.with_name(target.name + ".old"))
    os.replace(tmp, target)
