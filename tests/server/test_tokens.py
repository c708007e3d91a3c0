"""Token faults (unknown, malformed, expired, revoked, wrong scheme) are 401s with a reason and
audited; ``corral server token create`` prints the token alone; only its hash is stored."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select, update

from corral.server.db import Database
from corral.server.models import AdminEvent, Token
from corral.server.tokens import TOKEN_RE, hash_token
from tests.server.conftest import Served, cli


def _refusals(db_url: str) -> list[str]:
    db = Database(db_url)
    with db.session() as session:
        rows = session.scalars(select(AdminEvent).where(AdminEvent.action == "auth.refused")
                               .order_by(AdminEvent.id))
        out = [str(r.detail["reason"]) for r in rows]
    db.dispose()
    return out


def test_token_faults_are_401_and_audited(server: Served) -> None:
    good = server.token()
    expired = server.token("viewer")
    db = Database(server.db_url)
    with db.session() as session:
        session.execute(update(Token).where(Token.secret_hash == hash_token(expired))
                        .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    db.dispose()
    revoked = server.token("admin")
    with db.session() as session:
        revoked_id = session.scalar(select(Token.id).where(
            Token.secret_hash == hash_token(revoked)))
    cli("server", "token", "revoke", str(revoked_id), env={"CORRAL_DB_URL": server.db_url})
    unknown = "crl_" + "A" * 43
    cases = {
        None: "no token",
        "Bearer " + unknown: "unknown token",
        "Bearer nonsense": "malformed token",
        "Basic " + good: "not a bearer token",
        "Bearer " + expired: "expired at",
        "Bearer " + revoked: "was revoked",
    }
    import httpx

    for header, reason in cases.items():
        headers = {"Authorization": header} if header else {}
        resp = httpx.get(server.url + "/api/v1/teams", headers=headers)
        assert resp.status_code == 401, (header, resp.text)
        assert resp.headers["www-authenticate"] == "Bearer"
        assert reason in resp.json()["error"]["message"], (header, resp.text)
    assert httpx.get(server.url + "/api/v1/teams",
                     headers={"Authorization": "Bearer " + good}).status_code == 200
    refusals = _refusals(server.db_url)
    assert len(refusals) == 5  # every fault but the missing header names a token
    assert not any(good in r or expired in r or revoked in r for r in refusals)


def test_cli_token_create_prints_the_token_alone_and_stores_a_hash(db_url: str,
                                                                   server: Served) -> None:
    env = {"CORRAL_DB_URL": db_url}
    with server.client(server.token()) as c:
        assert c.post("/teams", json={"name": "web"}).status_code == 201
    done = cli("server", "token", "create", "--name", "ci", "--role", "member", "--team", "web",
               "--ttl", "12h", env=env)
    secret = done.stdout.strip()
    assert done.stdout == secret + "\n" and TOKEN_RE.fullmatch(secret)
    db = Database(db_url)
    with db.session() as session:
        row = session.scalars(select(Token).where(Token.name == "ci")).one()
        assert row.secret_hash == hash_token(secret)
        assert all(secret not in str(v) for v in vars(row).values())
        left = row.expires_at - dt.datetime.now(dt.UTC)
        assert dt.timedelta(hours=11) < left <= dt.timedelta(hours=12)
    db.dispose()
    with server.client(secret) as c:
        who = c.get("/whoami").json()
        assert {k: who[k] for k in ("actor", "kind", "org_role", "teams")} == {
            "actor": "token:ci", "kind": "service", "org_role": None, "teams": {"web": "member"}}
        assert who["subject"] is None and who["email"] is None  # a service token has no human
    listing = cli("server", "token", "list", "--json", env=env).stdout
    assert '"name": "ci"' in listing and secret not in listing
    bad = cli("server", "token", "create", "--name", "x", "--role", "god", env=env, check=False)
    assert bad.returncode == 2 and re.search(r"--role'?: 'god'", bad.stderr), bad.stderr
