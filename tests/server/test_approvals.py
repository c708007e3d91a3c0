"""Approvals held on the server, on SQLite and PostgreSQL: a run asks with its sandbox token
and long-polls; a team admin decides; the run's own token, a member and another team cannot."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from corral.client import ServerRun
from corral.server.db import Database
from corral.server.models import AdminEvent
from tests.server.conftest import Served


def test_a_run_asks_a_human_decides_the_run_cannot(server: Served) -> None:
    owner = server.token()
    with server.client(owner) as c:
        for team, project in (("web", "shop"), ("other", "elsewhere")):
            assert c.post("/teams", json={"name": team}).status_code == 201
            assert c.post(f"/teams/{team}/projects", json={"name": project}).status_code == 201
    run = ServerRun.register(server.url, owner, "shop", host="h", sandbox="sb-1",
                             policy_digest="ef" * 32)
    ident = run.request_approval("bash", {"command": "rm -rf build"}, rule="p.yaml:9")
    assert run.wait_decision(ident, 0).status == "pending"
    decide = f"/projects/shop/approvals/{ident}/approve"
    # The run's own token: never. Nor a member, nor another team's admin.
    with server.client(run.client.token) as c:
        assert c.post(decide, json={}).status_code == 404
        assert c.post(f"/projects/shop/approvals/{ident}/deny", json={}).status_code == 404
        assert c.get("/projects/shop/approvals").status_code == 404
    with server.client(server.token("member", team="web")) as c:
        assert c.get("/projects/shop/approvals").json()["approvals"][0]["id"] == ident
        assert c.post(decide, json={}).status_code == 403
    with server.client(server.token("admin", team="other")) as c:
        assert c.post(decide, json={}).status_code == 404
    assert run.wait_decision(ident, 0).status == "pending"

    got = []
    waiter = threading.Thread(target=lambda: got.append(run.wait_decision(ident, 20)))
    waiter.start()
    time.sleep(0.5)  # let the poll start waiting; the answer must not wait for its timeout
    admin = server.token("admin", team="web")
    started = time.monotonic()
    with server.client(admin) as c:
        resp = c.post(decide, json={"reason": "build dir only"})
        assert resp.status_code == 200, resp.text
        assert c.post(decide, json={}).status_code == 409  # decided once
    waiter.join(20)
    assert got and got[0].status == "approved" and got[0].decided_by == "token:test-admin"
    assert time.monotonic() - started < 5
    with server.client(owner) as c:
        assert c.get("/projects/shop/approvals").json()["approvals"] == []
        listed = c.get("/projects/shop/approvals?all=true").json()["approvals"]
        assert listed[0]["reason"] == "build dir only"
    run.end(0)


def test_an_approve_always_is_listed_and_revoked_then_the_call_asks_again(
        server: Served) -> None:
    owner = server.token()
    with server.client(owner) as c:
        assert c.post("/teams", json={"name": "web"}).status_code == 201
        assert c.post("/teams/web/projects", json={"name": "shop"}).status_code == 201
    run = ServerRun.register(server.url, owner, "shop", host="h", sandbox="sb-2",
                             policy_digest="ab" * 32)
    call = {"command": "make deploy"}
    ident = run.request_approval("exec", call, rule="p.yaml:3")
    admin = server.token("admin", team="web")
    with server.client(admin) as c:
        assert c.post(f"/projects/shop/approvals/{ident}/approve",
                      json={"always": True}).status_code == 200
        standing = c.get("/projects/shop/approvals/standing").json()["standing"]
    assert [(s["tool"], s["scope"], s["approval"]) for s in standing] == [
        ("exec", "make deploy", ident)]
    again = run.request_approval("exec", call, rule="p.yaml:3")
    assert run.wait_decision(again, 0).status == "approved"  # standing: not asked

    gone = f"/projects/shop/approvals/standing/{standing[0]['id']}"
    with server.client(server.token("member", team="web")) as c:
        assert c.get("/projects/shop/approvals/standing").json()["standing"] == standing
        assert c.delete(gone).status_code == 403  # reading is not deciding
    with server.client(run.client.token) as c:
        assert c.delete(gone).status_code == 404
    with server.client(admin) as c:
        resp = c.delete(gone)
        assert resp.status_code == 200 and resp.json()["scope"] == "make deploy"
        assert c.delete(gone).status_code == 404
        assert c.get("/projects/shop/approvals/standing").json()["standing"] == []
    third = run.request_approval("exec", call, rule="p.yaml:3")
    assert run.wait_decision(third, 0).status == "pending"  # held for a human again
    db = Database(server.db_url)
    with db.session() as session:
        actions = [e.action for e in session.scalars(select(AdminEvent))]
    db.dispose()
    assert actions.count("approval.revoke") == 1
    run.end(0)


def test_a_lone_surrogate_in_a_held_call_is_a_422_not_a_500(server: Served) -> None:
    owner = server.token()
    with server.client(owner) as c:
        assert c.post("/teams", json={"name": "web"}).status_code == 201
        assert c.post("/teams/web/projects", json={"name": "shop"}).status_code == 201
    run = ServerRun.register(server.url, owner, "shop", host="h", sandbox="sb-3",
                             policy_digest="cd" * 32)
    with server.client(run.client.token) as c:
        for body in ('{"tool": "exec", "args": {"command": "ls \\ud800"}}',
                     '{"tool": "\\udfff", "args": {}}',
                     '{"tool": "exec", "args": {"\\ud800": 1}}'):
            resp = c.post(f"/runs/{run.id}/approvals", content=body.encode(),
                          headers={"content-type": "application/json"})
            assert resp.status_code == 422, resp.text
        ok = c.post(f"/runs/{run.id}/approvals", json={"tool": "exec", "args": {
            "command": "ls \U0001f600"}})  # a real astral character (a JSON surrogate pair)
        assert ok.status_code == 201, ok.text
    run.end(0)
