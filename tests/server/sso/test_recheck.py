"""The periodic IdP recheck of a login token fails closed (corral/server/oidc/recheck.py): a
token whose sealed refresh token no longer opens, or whose refresh answers for another subject,
is revoked, not left alone. The IdP here is a stand-in that answers as told:
these are attack and fault inputs; the success path runs against the real provider in
test_stepup.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from corral.server.config import ServerConfig
from corral.server.crypto import load_kek
from corral.server.db import Database
from corral.server.models import Token, User
from corral.server.oidc.accounts import issue_login_token
from corral.server.oidc.idp import Idp
from corral.server.oidc.recheck import recheck
from corral.server.tokens import TokenRefused


class _AnsweringIdp(Idp):
    def __init__(self, sub: str) -> None:  # no discovery: answers as told
        self.sub = sub
        self.config = SimpleNamespace(groups_claim="groups", group_map={})  # type: ignore[assignment]

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        return {"id_token": "x", "refresh_token": refresh_token}

    def verify(self, id_token: str, *, nonce: str | None) -> dict[str, Any]:
        return {"sub": self.sub}


def _setup(db_url: str, kek_file: Path, sub: str) -> tuple[Database, Any, int]:
    db = Database(db_url)
    kek = load_kek(kek_file)
    with db.session() as s:
        user = User(email="alice@example.com", name="Alice", idp_subject="alice")
        s.add(user)
        s.flush()
        token, _ = issue_login_token(s, kek, user, name="laptop", step_up=False,
                                     refresh_token="rt-1")
        token.idp_checked_at = token.created_at - dt.timedelta(hours=1)  # a recheck is due
        token_id = token.id
    app = SimpleNamespace(state=SimpleNamespace(idp=_AnsweringIdp(sub),
                                                config=ServerConfig(kek_file=kek_file)))
    return db, SimpleNamespace(app=app), token_id


def _recheck(db: Database, request: Any, token_id: int) -> None:
    with db.sessions() as s:
        recheck(request, s, s.get(Token, token_id))  # type: ignore[arg-type]
        s.commit()


def _revoked(db: Database, token_id: int) -> bool:
    with db.sessions() as s:
        return s.get(Token, token_id).revoked_at is not None  # type: ignore[union-attr]


def test_the_same_subject_keeps_the_token(db_url: str, kek_file: Path) -> None:
    db, request, token_id = _setup(db_url, kek_file, sub="alice")
    _recheck(db, request, token_id)
    assert not _revoked(db, token_id)


@pytest.mark.parametrize("fault", ["other subject", "refresh token damaged"])
def test_a_token_the_idp_cannot_vouch_for_is_revoked(db_url: str, kek_file: Path,
                                                     fault: str) -> None:
    db, request, token_id = _setup(db_url, kek_file,
                                   sub="mallory" if fault == "other subject" else "alice")
    with db.session() as s:
        token = s.get(Token, token_id)
        assert token is not None
        if fault == "refresh token damaged":
            token.idp_refresh = token.idp_refresh[:-8] + "AAAAAAAA"  # type: ignore[index]
    with pytest.raises(TokenRefused):
        _recheck(db, request, token_id)
    assert _revoked(db, token_id)
