"""Authorization, generated from the app's route table: every ``/api/v1`` route declares one
permission, answers 401 without a token, and a viewer of another team gets 404 on every
team- or run-scoped route (the same 404 as a resource that does not exist), 403 on org-scoped
ones, and sees nothing of the team in listings. A new route is covered without an edit here.
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute

from corral.server.authz import Permission, Principal, Role, decide
from corral.server.errors import ApiError
from tests.server.conftest import Served

PARAMS = {"team": "web", "project": "shop", "email": "a@example.com", "name": "github",
          "approval": "0" * 32, "token": "999999", "standing": "1"}


def _permissions(dependant: Any) -> list[Permission]:
    found = []
    for dep in dependant.dependencies:
        perm = getattr(dep.call, "corral_permission", None)
        if perm is not None:
            found.append(perm)
        found += _permissions(dep)
    return found


def _flatten(routes: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(full path, route) of every route, through included routers (FastAPI keeps them nested
    since 0.16x); any other kind of route is returned as is, and fails the test below."""
    out: list[tuple[str, Any]] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            out += _flatten(included.routes, prefix + route.include_context.prefix)
        else:
            out.append((prefix + getattr(route, "path", ""), route))
    return out


def _routes(app: Any) -> list[tuple[str, APIRoute, Permission]]:
    out = []
    for path, route in _flatten(app.routes):
        if not path.startswith("/api/v1/") or path == "/api/v1/openapi.json":
            continue
        assert isinstance(route, APIRoute), f"{path}: not an APIRoute, cannot check it"
        perms = _permissions(route.dependant)
        assert len(perms) == 1, f"{path} declares {perms}: use require(Permission.X)"
        out.append((path, route, perms[0]))
    return out


def test_every_route_declares_one_permission_and_hides_other_teams(server: Served,
                                                                     kek_file: Any) -> None:
    from corral.server.app import create_app
    from corral.server.config import ServerConfig

    app = create_app(ServerConfig(db=server.db_url, kek_file=kek_file))
    routes = _routes(app)
    assert len(routes) >= 15
    with server.client(server.token()) as owner:
        assert owner.post("/teams", json={"name": "web"}).status_code == 201
        assert owner.post("/teams", json={"name": "other"}).status_code == 201
        assert owner.post("/teams/web/projects", json={"name": "shop"}).status_code == 201
        run = owner.post("/projects/shop/runs", json={"host": "h", "sandbox": "s1",
                                                      "policy_digest": "0" * 64})
        run_id = run.json()["run"]["id"] if run.status_code == 201 else "no-run"
    outsider = server.token("viewer", team="other")
    checked = 0
    with server.client(None) as anonymous, server.client(outsider) as viewer:
        for full, route, perm in routes:
            path = full.removeprefix("/api/v1").format(**PARAMS, run=run_id)
            for method in route.methods:
                body = {} if method in ("POST", "PUT", "PATCH") else None
                resp = anonymous.request(method, path, json=body)
                assert resp.status_code == 401, (method, path, resp.text)
                assert resp.json()["error"]["code"] == "unauthorized"
                resp = viewer.request(method, path, json=body)
                scope = perm.spec.scope
                want = {"team": 404, "run": 404, "org": 403, "any": 200}[scope]
                assert resp.status_code == want, (method, path, perm, resp.text)
                if want == 404:
                    # indistinguishable from a name that does not exist
                    assert resp.json() == {"error": {"code": "not_found",
                                                     "message": "no such resource"}}
                if want == 200:
                    assert "web" not in resp.text and "shop" not in resp.text, resp.text
                checked += 1
    assert checked == sum(len(r.methods) for _, r, _ in routes)


def test_decide_over_every_role_and_scope() -> None:
    """decide() against a table written from the rules, over every role, scope and team."""
    teams = (None, 1, 2)
    for perm in Permission:
        spec = perm.spec
        for org_role in (None, *Role):
            for team_role in (None, *Role):
                for kind in ("service", "user", "sandbox"):
                    for step_up in (False, True):
                        p = Principal(actor="t", kind=kind, org_role=org_role,
                                      team_roles={1: team_role} if team_role else {},
                                      run_id="r1" if kind == "sandbox" else None,
                                      step_up=step_up)
                        for team in teams:
                            for run in ("r1", "r2"):
                                _check_one(p, perm, spec, team, run)


def _check_one(p: Principal, perm: Permission, spec: Any, team: int | None, run: str) -> None:
    if spec.scope == "run":
        want = (200 if p.run_id == run else 403) if p.kind == "sandbox" else 404
    elif p.kind == "sandbox":
        want = 404
    else:
        if spec.scope == "any":
            role: Role | None = Role.OWNER
        elif spec.scope == "org":
            role = p.org_role
        else:
            roles = [r for r in (p.org_role, p.team_roles.get(team) if team else None) if r]
            role = max(roles) if roles else None
        if role is None:
            want = 404 if spec.scope == "team" else 403
        elif role < spec.role or (spec.step_up and p.kind == "user" and not p.step_up):
            want = 403
        else:
            want = 200
    try:
        decide(p, perm, team_id=team, run_id=run)
        got = 200
    except ApiError as err:
        got = err.status
    assert got == want, (p, perm, team, run)
