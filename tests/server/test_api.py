"""The API end to end on SQLite and PostgreSQL: teams, projects, agents, policies, credentials."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from tests.server.conftest import Served

GOOD = "name: shop\negress:\n  - host: api.github.com\n    action: direct\n"


def _ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


def _err(resp: httpx.Response, status: int) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return dict(body["error"])


def _setup(c: httpx.Client) -> None:
    _ok(c.post("/teams", json={"name": "web"}), 201)
    _ok(c.post("/teams/web/projects", json={"name": "shop"}), 201)


def test_teams_projects_agents(server: Served) -> None:
    with server.client(server.token()) as c:
        _setup(c)
        assert _err(c.post("/teams", json={"name": "web"}), 409)["code"] == "conflict"
        _ok(c.put("/teams/web/members/Alice@Example.com", json={"role": "admin"}))
        assert _ok(c.get("/teams/web/members")) == {
            "members": [{"email": "alice@example.com", "role": "admin"}]}
        _ok(c.post("/projects/shop/agents", json={"name": "alice/claude"}), 201)
        assert [a["name"] for a in _ok(c.get("/projects/shop/agents"))["agents"]] == [
            "alice/claude"]
        assert _ok(c.get("/projects"))["projects"][0]["team"] == "web"
        assert _err(c.get("/projects/nope"), 404)["code"] == "not_found"
        assert _err(c.post("/teams", json={"name": "Bad Name"}), 422)["code"] == "invalid"
        assert _err(c.post("/teams", json={"name": "x", "extra": 1}), 422)["code"] == "invalid"


def test_bad_policy_is_422_with_the_loaders_message(server: Served) -> None:
    with server.client(server.token()) as c:
        _setup(c)
        bad = "name: shop\negress:\n  - host: api.github.com\n    action: nope\n"
        err = _err(c.post("/projects/shop/policies", json={"filename": "team.yaml",
                                                           "text": bad}), 422)
        assert err["message"].startswith("team.yaml:4: egress[0].action: ")
        secret_source = ("name: s\ncredentials:\n  gh:\n    secret: env:GITHUB_TOKEN\n")
        err = _err(c.post("/projects/shop/policies", json={"filename": "s.yaml",
                                                           "text": secret_source}), 422)
        assert "s.yaml:4" in err["message"]  # a server policy is never trusted


def test_policy_versions_and_resolved(server: Served) -> None:
    with server.client(server.token()) as c:
        _setup(c)
        v1 = _ok(c.post("/projects/shop/policies", json={"filename": "p.yaml", "text": GOOD}),
                 201)
        v2 = _ok(c.post("/projects/shop/policies",
                        json={"filename": "p.yaml", "text": GOOD + "# v2\n"}), 201)
        assert (v1["version"], v2["version"]) == (1, 2)
        versions = _ok(c.get("/projects/shop/policies"))["versions"]
        assert [v["version"] for v in versions] == [1, 2]  # immutable: v1 is still there
        org = "name: baseline\negress:\n  - host: '*.evil.example'\n    action: deny\n"
        _ok(c.post("/org/policies", json={"filename": "org.yaml", "text": org}), 201)
        resolved = _ok(c.get("/projects/shop/policy"))
        assert [p["name"] for p in resolved["policies"]] == ["baseline", "shop"]
        assert resolved["policies"][1]["version"] == 2
        assert "# v2" in resolved["yaml"] and len(resolved["digest"]) == 64


def test_org_policy_conflict_is_409_naming_both_rules(server: Served) -> None:
    with server.client(server.token()) as c:
        _setup(c)
        _ok(c.post("/projects/shop/policies", json={"filename": "p.yaml", "text": GOOD}), 201)
        org = "name: baseline\negress:\n  - host: api.github.com\n    action: inspect\n"
        err = _err(c.post("/org/policies", json={"filename": "org.yaml", "text": org}), 409)
        assert err["code"] == "policy_conflict"
        assert "p.yaml:3" in err["message"] and "org.yaml:3" in err["message"], err
        assert _ok(c.get("/org/policies"))["policies"] == []  # refused: nothing attached


def test_credential_values_are_never_readable(server: Served) -> None:
    from corral.server.crypto import Sealed, load_kek
    from corral.server.db import Database
    from corral.server.models import Credential

    value = "ghp_s3cr3t-value-0123456789"
    with server.client(server.token()) as c:
        _setup(c)
        _ok(c.put("/projects/shop/credentials/github", json={"value": value, "release": True}))
        listing = c.get("/projects/shop/credentials")
        assert value not in listing.text
        assert _ok(listing)["credentials"][0]["release"] is True
        base = "/projects/shop/credentials/github"
        for path in (base, base + "/value"):
            assert c.get(path).status_code in (404, 405)
    db = Database(server.db_url)
    with db.session() as session:
        row = session.scalars(select(Credential)).one()
        stored = b"".join([row.ciphertext, row.nonce, row.wrapped_key, row.key_nonce])
        assert value.encode() not in stored
        sealed = Sealed(row.ciphertext, row.nonce, row.wrapped_key, row.key_nonce, row.kek_id)
        assert load_kek(server.kek).open(row.project_id, "github", sealed) == value.encode()
    db.dispose()


def test_openapi_and_error_shape(server: Served) -> None:
    spec = httpx.get(server.url + "/api/v1/openapi.json").json()
    assert "/api/v1/teams" in spec["paths"]
    assert httpx.get(server.url + "/docs").status_code == 404  # no CDN-backed docs page
    with server.client(server.token()) as c:
        assert _err(c.get("/no/such/route"), 404)["code"] == "not_found"
        assert _err(c.delete("/teams"), 405)["code"] == "method_not_allowed"
        bad_json = c.post("/teams", content=b"{not json", headers={
            "content-type": "application/json"})
        assert _err(bad_json, 422)["code"] == "invalid"


def test_admin_changes_are_audited(server: Served) -> None:
    from corral.server.db import Database
    from corral.server.models import AdminEvent

    with server.client(server.token()) as c:
        _setup(c)
        _ok(c.put("/projects/shop/credentials/k", json={"value": "v"}))
    db = Database(server.db_url)
    with db.session() as session:
        actions = [e.action for e in session.scalars(select(AdminEvent).order_by(AdminEvent.id))]
    db.dispose()
    assert actions == ["token.create", "team.create", "project.create", "credential.set"]
