"""The web UI over HTTP, signed in through the real OpenID provider, on SQLite and PostgreSQL:
every page for the roles that should see it, the outsider's 404 on each, CSRF on every
change, agent-controlled text inert, credential values never in any response, headers."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.server.web.conftest import Ui

CSP = "content-security-policy"

# Pages of team web's resources: alice (admin) and carol (viewer) see them; bob (only in
# team other) gets the not-found page for every one.
TEAM_PAGES = ["/projects/shop", "/teams/web", "/policies/shop", "/credentials?project=shop",
              "/audit?project=shop", "/sandboxes/{run}", "/sandboxes/{run}/verify",
              "/policies/shop/explain?url=https://example.com/", "/audit/export.jsonl?project=shop",
              "/policies/shop/diff?policy=p&version=1"]
LIST_PAGES = ["/", "/sandboxes", "/approvals", "/policies", "/projects", "/teams",
              "/credentials", "/spend", "/audit", "/tokens"]


def _push(ui: Ui, client: httpx.Client, csrf: str, text: str) -> httpx.Response:
    return client.post(ui.url + "/policies/shop/push", data={"filename": "p.yaml", "text": text},
                       headers={"X-CSRF-Token": csrf, "HX-Request": "true"})


POLICY = "name: p\negress:\n  - host: api.example.com\n    action: inspect\n"


def test_role_matrix(ui: Ui) -> None:
    run = ui.start_run(agent="claude-code")
    run.ship(("proxy.deny", {"host": "evil.example", "rule": "default deny", "method": "GET",
                             "path": "/x"}))
    with httpx.Client(timeout=30) as alice, httpx.Client(timeout=30) as bob, \
            httpx.Client(timeout=30) as carol:
        token = ui.login(alice, "alice")
        assert _push(ui, alice, token, POLICY).status_code == 200
        ui.login(bob, "bob")
        ui.login(carol, "carol")
        for path in LIST_PAGES:
            for who in (alice, bob, carol):
                resp = who.get(ui.url + path)
                assert resp.status_code == 200, (path, resp.status_code)
                assert "script-src 'self'" in resp.headers[CSP]
        for raw in TEAM_PAGES:
            path = raw.format(run=run.id)
            for who in (alice, carol):
                assert who.get(ui.url + path).status_code == 200, path
            resp = bob.get(ui.url + path)
            assert resp.status_code == 404, (path, resp.status_code)
            assert "shop" not in resp.text and run.id not in resp.text
        # Listings show bob nothing of team web.
        for path in ("/sandboxes", "/projects", "/policies", "/audit", "/"):
            text = bob.get(ui.url + path).text
            assert run.id not in text and ">shop<" not in text, path
        assert run.id in alice.get(ui.url + "/sandboxes").text
        assert bob.get(ui.url + "/policies/org").status_code == 404  # no org-wide role


def test_signed_out_goes_to_login_and_changes_need_csrf(ui: Ui) -> None:
    run = ui.start_run()
    with httpx.Client(timeout=30) as anon:
        resp = anon.get(ui.url + f"/sandboxes/{run.id}", follow_redirects=False)
        assert resp.status_code == 303
        assert resp.headers["location"].startswith("/login?next=%2Fsandboxes%2F")
        assert anon.post(ui.url + f"/sandboxes/{run.id}/kill").status_code == 401
    with httpx.Client(timeout=30) as alice:
        csrf = ui.login(alice, "alice")
        changes = [(f"/sandboxes/{run.id}/kill", {"reason": "x"}),
                   ("/policies/shop/push", {"filename": "p.yaml", "text": POLICY}),
                   ("/credentials/shop", {"name": "gh", "value": "v"}),
                   ("/teams/web/members", {"email": "dan@example.com", "role": "admin"}),
                   ("/projects/shop/agents", {"agent": "new"}),
                   ("/policies/shop/validate", {"text": POLICY})]
        for path, form in changes:
            for headers in ({}, {"X-CSRF-Token": "0" * 64}):
                resp = alice.post(ui.url + path, data=form, headers=headers)
                assert resp.status_code == 403, (path, headers, resp.status_code)
                assert "CSRF" in resp.text
        # nothing changed
        page = alice.get(ui.url + f"/sandboxes/{run.id}").text
        assert "kill requested" not in page
        assert "dan@example.com" not in alice.get(ui.url + "/teams/web").text
        resp = alice.post(ui.url + f"/sandboxes/{run.id}/kill", data={"reason": "stop"},
                          headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 200 and "kill requested" in resp.text


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>"\'&'


def test_agent_controlled_text_renders_inert(ui: Ui) -> None:
    run = ui.start_run(command=["sh", "-c", HOSTILE])
    run.ship(("proxy.deny", {"host": "h.example", "rule": "p.yaml:3", "method": "GET",
                             "path": "/" + HOSTILE}),
             ("exec.start", {"argv": ["curl", HOSTILE], "path": "/usr/bin/curl"}),
             ("tool.call", {"tool": HOSTILE, "status": "ok"}))
    approval = run.ask(HOSTILE, {"cmd": HOSTILE}, rule=HOSTILE)
    with httpx.Client(timeout=30) as alice:
        ui.login(alice, "alice")
        for path in (f"/sandboxes/{run.id}", "/sandboxes", "/approvals", "/",
                     "/audit?project=shop"):
            text = alice.get(ui.url + path).text
            assert "<script>alert" not in text and "<img src=x" not in text, path
            assert "&lt;script&gt;alert(" in text, path
        assert approval in alice.get(ui.url + "/approvals").text


def test_a_credential_value_never_appears_in_a_response(ui: Ui) -> None:
    secret = "sk-live-" + "q7Zx" * 8
    with httpx.Client(timeout=30) as alice:
        csrf = ui.login(alice, "alice")
        seen: list[httpx.Response] = []
        alice.event_hooks["response"] = [lambda r: seen.append(r)]
        resp = alice.post(ui.url + "/credentials/shop", data={"name": "github", "value": secret},
                          headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
        assert resp.status_code == 200 and "github set" in resp.text
        for path in [*LIST_PAGES, "/credentials?project=shop", "/projects/shop",
                     "/audit/export.jsonl?project=shop"]:
            alice.get(ui.url + path)
        alice.get(ui.url + "/api/v1/projects/shop/credentials")
        for r in seen:
            r.read()
            assert secret not in r.text, r.url
        assert len(seen) >= 14
        assert "github" in alice.get(ui.url + "/credentials?project=shop").text
    with ui.db().session() as s:
        from sqlalchemy import text

        for row in s.execute(text("SELECT detail FROM admin_events")):
            assert secret not in str(row[0])


def test_security_headers_and_static_files(ui: Ui) -> None:
    with httpx.Client(timeout=30) as alice:
        ui.login(alice, "alice")
        resp = alice.get(ui.url + "/")
        csp = resp.headers[CSP]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and resp.headers["x-frame-options"] == "DENY"
        assert "<script>" not in resp.text and " style=" not in resp.text
        for name in ("app.js", "app.css", "vendor/htmx.min.js", "vendor/sse.min.js",
                     "vendor/chart.umd.js"):
            got = alice.get(ui.url + "/static/" + name)
            assert got.status_code == 200 and got.headers["x-content-type-options"] == "nosniff"
        for bad in ("../app.py", "vendor/../../ui.py", "%2e%2e/ui.py", "templates/ui/run.html"):
            assert alice.get(ui.url + "/static/" + bad).status_code == 404


@pytest.mark.parametrize("user", ["carol", "bob"])
def test_a_viewer_or_outsider_cannot_decide_or_push(ui: Ui, user: str) -> None:
    run = ui.start_run()
    approval = run.ask("shell", {"cmd": "ls"}, rule="p.yaml:9")
    with httpx.Client(timeout=30) as who:
        csrf = ui.login(who, user)
        headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
        resp = who.post(ui.url + f"/approvals/{approval}/approve", headers=headers)
        assert resp.status_code == (403 if user == "carol" else 404)
        assert _push(ui, who, csrf, POLICY).status_code == (403 if user == "carol" else 404)
    with run.api() as c:
        assert c.get(f"/runs/{run.id}/approvals/{approval}").json()["status"] == "pending"


def test_create_team_and_project_role_matrix(ui: Ui) -> None:
    """Teams are created by org admins, projects by team admins (or org admins), each with a
    fresh sign-in and the CSRF token; a viewer, a team admin asking for a team, an outsider
    and a stale session are refused and nothing is created."""
    from sqlalchemy import select, update

    from corral.server.models import AdminEvent, Project, Team, User, WebSession

    with ui.db().session() as s:
        s.execute(update(User).where(User.email == "bob@example.com").values(org_role="admin"))
        s.commit()

    def post(who: httpx.Client, csrf: str, path: str, form: dict[str, str]) -> httpx.Response:
        return who.post(ui.url + path, data=form,
                        headers={"X-CSRF-Token": csrf, "HX-Request": "true"})

    with httpx.Client(timeout=30) as alice, httpx.Client(timeout=30) as bob, \
            httpx.Client(timeout=30) as carol:
        a, b, c = ui.login(alice, "alice"), ui.login(bob, "bob"), ui.login(carol, "carol")
        # The forms are shown to the roles that may use them only.
        assert 'id="t-create"' in bob.get(ui.url + "/teams").text
        for who in (alice, carol):
            assert 'id="t-create"' not in who.get(ui.url + "/teams").text
        assert 'id="p-create"' in alice.get(ui.url + "/projects").text
        assert 'id="p-create"' not in carol.get(ui.url + "/projects").text
        # Teams: org admin only.
        assert post(alice, a, "/teams", {"team": "a-team"}).status_code == 403
        assert post(carol, c, "/teams", {"team": "c-team"}).status_code == 403
        assert post(bob, b, "/teams", {"team": "Bad Name"}).status_code == 422
        resp = post(bob, b, "/teams", {"team": "payments"})
        assert resp.status_code == 200 and "team payments created" in resp.text, resp.text
        assert post(bob, b, "/teams", {"team": "payments"}).status_code == 409
        # Projects: the team's admin (alice in web), not its viewer, not an outsider's team.
        assert post(carol, c, "/projects", {"team": "web", "project": "c-proj"}
                    ).status_code == 403
        assert post(alice, a, "/projects", {"team": "other", "project": "a-proj"}
                    ).status_code == 404
        assert post(alice, a, "/projects", {"team": "nope", "project": "a-proj"}
                    ).status_code == 404
        resp = post(alice, a, "/projects", {"team": "web", "project": "billing",
                                            "require_server": "true"})
        assert resp.status_code == 200 and "project billing created" in resp.text, resp.text
        assert post(alice, a, "/projects", {"team": "web", "project": "shop"}).status_code == 409
        assert post(bob, b, "/projects", {"team": "payments", "project": "ledger"}
                    ).status_code == 200
        assert alice.get(ui.url + "/projects/billing").status_code == 200
        assert bob.get(ui.url + "/teams/payments").status_code == 200
        # Without the CSRF token: refused before anything is read.
        resp = bob.post(ui.url + "/teams", data={"team": "csrf-less"})
        assert resp.status_code == 403 and "CSRF" in resp.text
        resp = alice.post(ui.url + "/projects", data={"team": "web", "project": "csrf-less"})
        assert resp.status_code == 403 and "CSRF" in resp.text
        # A stale sign-in (no step-up): refused, and the page says to sign in again.
        with ui.db().session() as s:
            s.execute(update(WebSession).values(step_up_until=None))
            s.commit()
        resp = post(bob, b, "/teams", {"team": "stale"})
        assert resp.status_code == 403 and "Sign in again" in resp.text
        resp = post(alice, a, "/projects", {"team": "web", "project": "stale"})
        assert resp.status_code == 403 and "Sign in again" in resp.text
        assert "Creating a project needs a fresh sign-in" in alice.get(ui.url + "/projects").text
    with ui.db().session() as s:
        assert set(s.scalars(select(Team.name))) == {"web", "other", "payments"}
        made = {p.name: p for p in s.scalars(select(Project))}
        assert set(made) == {"shop", "vault", "billing", "ledger"}
        assert made["billing"].require_server and not made["ledger"].require_server
        kinds = [(e.actor, e.action) for e in s.scalars(select(AdminEvent)) if e.action in
                 ("team.create", "project.create")]
        assert sorted(kinds) == [("alice@example.com", "project.create"),
                                 ("bob@example.com", "project.create"),
                                 ("bob@example.com", "team.create")], kinds


def test_standing_approvals_are_listed_and_revoked_by_who_may_decide(ui: Ui) -> None:
    run = ui.start_run()
    first = run.ask("exec", {"command": "make deploy"}, rule="p.yaml:9")
    with httpx.Client(timeout=30) as alice, httpx.Client(timeout=30) as bob, \
            httpx.Client(timeout=30) as carol:
        a, b, c = ui.login(alice, "alice"), ui.login(bob, "bob"), ui.login(carol, "carol")

        def post(who: httpx.Client, csrf: str, path: str) -> httpx.Response:
            return who.post(ui.url + path, headers={"X-CSRF-Token": csrf, "HX-Request": "true"})

        assert post(alice, a, f"/approvals/{first}/approve-always").status_code == 200
        page = alice.get(ui.url + "/approvals").text
        assert "make deploy" in page.split("Standing approvals")[1]
        with ui.db().session() as s:
            from sqlalchemy import select

            from corral.server.models import StandingApproval
            ident = s.scalars(select(StandingApproval.id)).one()
        assert f'id="revoke-{ident}"' in page
        assert f'id="revoke-{ident}"' not in carol.get(ui.url + "/approvals").text
        assert "make deploy" not in bob.get(ui.url + "/approvals").text  # other team's
        revoke = f"/approvals/standing/{ident}/revoke"
        assert post(carol, c, revoke).status_code == 403
        assert post(bob, b, revoke).status_code == 404
        assert alice.post(ui.url + revoke, headers={"HX-Request": "true"}).status_code == 403
        done = post(alice, a, revoke)
        assert done.status_code == 200 and "revoked" in done.text
        assert post(alice, a, revoke).status_code == 404
        assert 'id="standing-empty"' in alice.get(ui.url + "/approvals").text
    again = run.ask("exec", {"command": "make deploy"}, rule="p.yaml:9")
    with run.api() as api:
        assert api.get(f"/runs/{run.id}/approvals/{again}").json()["status"] == "pending"


def test_a_decision_in_the_page_wakes_the_held_calls_long_poll(
        ui: Ui, monkeypatch: pytest.MonkeyPatch) -> None:
    """The held call learns the decision because the decision wakes its long poll, not because
    the poll reads the database again: with those reads 10 minutes apart, the answer still
    arrives (it arrived only at the next read before the wake-up existed)."""
    from corral.server.api import approvals as api

    reads = threading.Event()
    load = api._load

    def counted(*args: Any) -> Any:
        found = load(*args)
        reads.set()
        return found

    monkeypatch.setattr(api, "POLL_S", 600.0)
    monkeypatch.setattr(api, "_load", counted)
    run = ui.start_run()
    approval = run.ask("shell", {"cmd": "git push"}, rule="p.yaml:9")
    answer: dict[str, Any] = {}
    poll = run.wait(approval, answer)
    assert reads.wait(30), "the long poll never read the request"
    with httpx.Client(timeout=30) as alice:
        csrf = ui.login(alice, "alice")
        resp = alice.post(ui.url + f"/approvals/{approval}/approve", data={"reason": "ok"},
                          headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
        assert resp.status_code == 200, resp.text
    poll.join(30)
    assert answer.get("answer", {}).get("status") == "approved", answer


def test_the_overview_shows_what_needs_attention_to_its_team_only(ui: Ui) -> None:
    """Denials and approvals waiting in the last hour, a trail refused on ingest (its chain did
    not verify) and a launcher gone silent are on the team's overview, and on nobody else's."""
    import datetime as dt

    from sqlalchemy import update

    from corral.server.models import Run, utcnow

    tampered = ui.start_run()
    tampered.ship(("proxy.deny", {"host": "evil.example", "rule": "default deny"}))
    forged = tampered.chain.event("proxy.allow", host="evil.example", rule="p.yaml:1")
    forged["hash"] = "0" * 64
    with tampered.api() as c:
        resp = c.post(f"/runs/{tampered.id}/events", json={"events": [forged]})
        assert resp.status_code >= 400, resp.text
    silent = ui.start_run()
    with ui.db().session() as s:
        s.execute(update(Run).where(Run.id == silent.id)
                  .values(last_heartbeat_at=utcnow() - dt.timedelta(minutes=5)))
        s.commit()
    approval = ui.start_run().ask("shell", {"cmd": "make deploy"}, rule="p.yaml:9")
    with httpx.Client(timeout=30) as alice, httpx.Client(timeout=30) as bob:
        ui.login(alice, "alice")
        ui.login(bob, "bob")
        page = alice.get(ui.url + "/").text
        assert 'id="denials-count">1<' in page and 'id="waiting-count">1<' in page, page
        attention = page.split('id="attention"')[1]
        assert f"run {tampered.id}" in attention.split("Silent launchers")[0], attention
        assert f"/sandboxes/{silent.id}" in attention.split("Silent launchers")[1], attention
        assert f"/approvals#a-{approval}" in page
        other = bob.get(ui.url + "/").text
        for secret in (tampered.id, silent.id, approval):
            assert secret not in other
        assert 'id="denials-count">0<' in other and 'id="waiting-count">0<' in other
