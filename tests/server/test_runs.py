"""Runs on SQLite and PostgreSQL: registration issues a short-lived, audience-bound sandbox
token scoped to its run; heartbeats renew it and carry a kill; the end kills it and anchors
the run's head in the ledger; replayed, foreign and other teams' tokens are refused, clearly,
and recorded on the server."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from corral.client import Refused, ServerRun
from tests.server.conftest import Served

DIGEST = "ab" * 32


def _setup(server: Served) -> str:
    owner = server.token()
    with server.client(owner) as c:
        for team, project in (("web", "shop"), ("other", "elsewhere")):
            assert c.post("/teams", json={"name": team}).status_code == 201
            assert c.post(f"/teams/{team}/projects", json={"name": project}).status_code == 201
        assert c.post("/projects/shop/agents", json={"name": "release-bot"}).status_code == 201
    return owner


def _register(server: Served, token: str, project: str = "shop", **extra: Any) -> ServerRun:
    return ServerRun.register(server.url, token, project, host="ci-7", sandbox="sb-1",
                              policy_digest=DIGEST, command=["claude", "-p", "hi"], **extra)


def _admin_events(server: Served, action: str) -> list[Any]:
    from corral.server.db import Database
    from corral.server.models import AdminEvent

    db = Database(server.db_url)
    with db.session() as s:
        rows = list(s.scalars(select(AdminEvent).where(AdminEvent.action == action)
                              .order_by(AdminEvent.id)))
    db.dispose()
    return rows


def test_register_heartbeat_kill_end(server: Served) -> None:
    from corral.server.db import Database
    from corral.server.models import LedgerEntry, Run, Token
    from corral.server.tokens import SANDBOX_AUDIENCE, hash_token

    owner = _setup(server)
    run = _register(server, owner, human="alice@example.com", agent="release-bot")
    db = Database(server.db_url)
    with db.session() as s:
        token = s.scalars(select(Token).where(Token.run_id == run.id)).one()
        row = s.get(Run, run.id)
        assert row is not None and row.command == ["claude", "-p", "hi"]
        assert row.human == "alice@example.com"
    assert token.kind == "sandbox" and token.audience == SANDBOX_AUDIENCE
    assert token.secret_hash == hash_token(run.client.token or "")  # stored hashed only
    life = token.expires_at - token.created_at
    assert dt.timedelta(minutes=14) < life <= dt.timedelta(minutes=15, seconds=1)
    assert run.heartbeat().kill_reason is None
    with db.session() as s:
        renewed = s.get(Token, token.id)
        assert renewed is not None and renewed.expires_at > token.expires_at

    with server.client(owner) as c:
        live = c.get("/projects/shop/runs").json()["runs"]
        assert [(r["id"], r["status"], r["agent"], r["human"]) for r in live] == [
            (run.id, "running", "release-bot", "alice@example.com")]
        assert c.post(f"/runs/{run.id}/kill", json={"reason": "runaway spend"}).status_code == 200
    beat = run.heartbeat()
    assert beat.kill_reason == "runaway spend" and beat.killed_by == "token:test-owner"

    sandbox_token = run.client.token
    ended = run.end(137, "killed from the server: runaway spend")
    assert ended["status"] == "ended"
    with db.session() as s:
        assert s.get(Token, token.id).revoked_at is not None  # type: ignore[union-attr]
        entry = s.scalars(select(LedgerEntry).where(LedgerEntry.run_id == run.id)).one()
        assert entry.hash == ended["ledger"]
    db.dispose()
    with server.client(owner) as c:
        assert c.get("/projects/shop/runs").json()["runs"] == []
        assert c.get("/projects/shop/runs?all=true").json()["runs"][0]["exit_status"] == 137

    # The replayed token after the end: refused, saying why, and recorded.
    with server.client(sandbox_token) as c:
        resp = c.post(f"/runs/{run.id}/heartbeat", json={})
    assert resp.status_code == 401
    assert "run ended" in resp.json()["error"]["message"], resp.text
    refused = _admin_events(server, "auth.refused")
    assert refused and "run ended" in str(refused[-1].detail["reason"])


def test_foreign_tokens_are_refused_and_recorded(server: Served) -> None:
    owner = _setup(server)
    one, two = _register(server, owner), _register(server, owner)
    other_team = server.token("admin", team="other")
    member = server.token("member", team="web")
    batch = {"events": [{"seq": 1, "ts": 1, "type": "x", "actor": "{}", "data": "{}", "v": 1,
                         "prev": "0" * 64, "hash": "0" * 64}]}
    with server.client(one.client.token) as c:
        for method, path, body in (("POST", "heartbeat", {}), ("POST", "end", {}),
                                   ("POST", "events", batch), ("GET", "events/cursor", None)):
            resp = c.request(method, f"/runs/{two.id}/{path}", json=body)
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["message"] == (
                f"this sandbox token belongs to run {one.id}; it reports for that run only")
        # A run's token reaches nothing else: no listing, no registering, no killing.
        assert c.get("/projects/shop/runs").status_code == 404
        assert c.post("/projects/shop/runs", json={"host": "h", "sandbox": "s",
                                                   "policy_digest": DIGEST}).status_code == 404
        assert c.post(f"/runs/{one.id}/kill", json={}).status_code == 404
    with server.client(other_team) as c:  # another team's admin
        assert c.post(f"/runs/{one.id}/kill", json={}).status_code == 404
        assert c.get(f"/runs/{one.id}").status_code == 404
        assert c.post(f"/runs/{one.id}/heartbeat", json={}).status_code == 404
    with server.client(member) as c:  # a member may start runs, not kill them
        assert c.post("/projects/shop/runs", json={
            "host": "h", "sandbox": "s", "policy_digest": DIGEST}).status_code == 201
        assert c.post(f"/runs/{one.id}/kill", json={}).status_code == 403
    refused = _admin_events(server, "authz.refused")
    wrong_run = [e for e in refused if e.detail.get("status") == 403
                 and e.detail.get("kind") == "sandbox"]
    assert len(wrong_run) == 4 and all(e.actor == "token:test-owner" for e in wrong_run)
    assert any(e.target == f"POST /api/v1/runs/{one.id}/kill" and e.detail["status"] == 404
               and e.actor == "token:test-admin" for e in refused)


def test_registration_input(server: Served) -> None:
    owner = _setup(server)
    with pytest.raises(Refused, match="no agent 'ghost'"):
        _register(server, owner, agent="ghost")
    with server.client(owner) as c:
        for bad in ({"host": "h", "sandbox": "bad id!", "policy_digest": DIGEST},
                    {"host": "h", "sandbox": "s", "policy_digest": "xyz"},
                    {"host": "", "sandbox": "s", "policy_digest": DIGEST},
                    {"host": "h", "sandbox": "s", "policy_digest": DIGEST, "extra": 1}):
            resp = c.post("/projects/shop/runs", json=bad)
            assert resp.status_code == 422, (bad, resp.text)
    # An expired sandbox token: refused as expired, saying the heartbeat stopped.
    run = _register(server, owner)
    from corral.server.db import Database
    from corral.server.models import Token, utcnow

    db = Database(server.db_url)
    with db.session() as s:
        row = s.scalars(select(Token).where(Token.run_id == run.id)).one()
        row.expires_at = utcnow() - dt.timedelta(seconds=1)
    db.dispose()
    resp = httpx.post(f"{server.url}/api/v1/runs/{run.id}/heartbeat", json={},
                      headers={"Authorization": f"Bearer {run.client.token}"})
    assert resp.status_code == 401 and "no heartbeat" in resp.text


def test_client_keeps_one_connection_and_names_failures(server: Served) -> None:
    from corral.client import Client, ServerUnavailable, fetch_policy
    from tests.server.conftest import free_port

    owner = _setup(server)
    run = _register(server, owner)
    run.heartbeat()
    conn = run.client._conn
    assert conn is not None and conn.sock is not None
    local = conn.sock.getsockname()
    run.heartbeat()
    run.cursor()
    assert run.client._conn is conn and conn.sock.getsockname() == local  # one connection
    with pytest.raises(Refused) as refused:
        run.ship_events([{"seq": 2, "ts": 1, "type": "x", "actor": "{}", "data": "{}", "v": 1,
                          "prev": "0" * 64, "hash": "0" * 64}])
    assert refused.value.status == 422 and refused.value.code == "gap"
    assert fetch_policy(server.url, owner, "shop")["digest"]
    with pytest.raises(ServerUnavailable, match="cannot reach the server"):
        Client(f"http://127.0.0.1:{free_port()}", owner, timeout=2).get("/whoami")
