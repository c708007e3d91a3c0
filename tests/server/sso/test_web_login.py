"""The browser login through the real OpenID provider (driven with httpx here; Chromium in
test_browser.py): session cookie, safe next, fixation, CSRF, logout, IdP unreachable."""

from __future__ import annotations

import httpx

from tests.server.sso.conftest import Provider, SsoServer, idp_login


def _login(server: SsoServer, client: httpx.Client, user: str = "alice",
           next_: str = "/") -> httpx.Response:
    back = idp_login(client, f"{server.url}/login?next={next_}", user,
                     server.url + "/auth/callback")
    return client.get(back, follow_redirects=False)


def test_login_lands_on_a_page_with_the_users_name(sso_server: SsoServer) -> None:
    with httpx.Client(timeout=30) as client:
        resp = _login(sso_server, client)
        assert resp.status_code == 303, resp.text
        assert resp.headers["location"] == "/"
        cookie = resp.headers.get_list("set-cookie")
        session = next(c for c in cookie if c.startswith("corral_session="))
        assert "HttpOnly" in session and "SameSite=lax" in session and "Path=/" in session
        assert "Domain" not in session  # host-only: a sibling host never gets it
        page = client.get(sso_server.url + "/")
        assert page.status_code == 200
        assert "Alice Liddell" in page.text
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        who = client.get(sso_server.url + "/api/v1/whoami").json()
        assert who["email"] == "alice@example.com" and who["subject"] == "alice"
        assert who["teams"] == {}  # no team named "web" yet


def test_a_replayed_callback_is_refused(sso_server: SsoServer) -> None:
    with httpx.Client(timeout=30) as client:
        back = idp_login(client, f"{sso_server.url}/login", "alice",
                         sso_server.url + "/auth/callback")
        assert client.get(back, follow_redirects=False).status_code == 303
        again = client.get(back, follow_redirects=False)
        assert again.status_code == 400
        assert "unknown, already used or expired" in again.text


def test_a_wrong_state_is_refused(sso_server: SsoServer) -> None:
    with httpx.Client(timeout=30) as client:
        back = idp_login(client, f"{sso_server.url}/login", "alice",
                         sso_server.url + "/auth/callback")
        forged = back.replace("state=", "state=x")
        resp = client.get(forged, follow_redirects=False)
        assert resp.status_code == 400 and "corral_session" not in resp.headers.get(
            "set-cookie", "")


def test_a_callback_in_another_browser_is_refused(sso_server: SsoServer) -> None:
    """Login CSRF: a victim's browser fed an attacker's callback URL."""
    with httpx.Client(timeout=30) as attacker, httpx.Client(timeout=30) as victim:
        back = idp_login(attacker, f"{sso_server.url}/login", "bob",
                         sso_server.url + "/auth/callback")
        resp = victim.get(back, follow_redirects=False)
        assert resp.status_code == 400 and "another browser" in resp.text


def test_next_is_never_an_open_redirect(sso_server: SsoServer) -> None:
    with httpx.Client(timeout=30) as client:
        resp = _login(sso_server, client, next_="//evil.example/x")
        assert resp.headers["location"] == "/"
        resp = _login(sso_server, client, next_="/projects?x=1")
        assert resp.headers["location"] == "/projects?x=1"


def test_a_new_session_id_after_login(sso_server: SsoServer) -> None:
    """Fixation: a session id planted before login is never the authenticated one."""
    with httpx.Client(timeout=30) as client:
        first = _login(sso_server, client)
        planted = first.cookies["corral_session"]
        client.cookies.set("corral_session", planted)
        second = _login(sso_server, client)
        fresh = second.cookies["corral_session"]
        assert fresh != planted
    with httpx.Client(timeout=30, cookies={"corral_session": planted}) as old:
        assert old.get(sso_server.url + "/", follow_redirects=False).status_code == 303


def test_logout_needs_csrf_and_ends_the_session_server_side(sso_server: SsoServer) -> None:
    with httpx.Client(timeout=30) as client:
        _login(sso_server, client)
        sid = client.cookies["corral_session"]
        forged = client.post(sso_server.url + "/logout", data={"csrf": "nope"})
        assert forged.status_code == 403
        assert client.get(sso_server.url + "/").status_code == 200
        page = client.get(sso_server.url + "/").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        assert client.post(sso_server.url + "/logout", data={"csrf": csrf}).status_code == 200
    with httpx.Client(timeout=30, cookies={"corral_session": sid}) as copied:
        assert copied.get(sso_server.url + "/", follow_redirects=False).status_code == 303
        assert copied.get(sso_server.url + "/api/v1/whoami").status_code == 401


def test_api_by_cookie_needs_the_csrf_header(sso_server: SsoServer) -> None:
    with httpx.Client(timeout=30) as client:
        _login(sso_server, client)
        resp = client.post(sso_server.url + "/api/v1/teams", json={"name": "web"})
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "csrf"


def test_idp_unreachable_clear_error_and_sessions_keep_working(
        sso_server: SsoServer, idp: Provider) -> None:
    with httpx.Client(timeout=30) as client:
        _login(sso_server, client)
        idp.stop()
        resp = client.get(sso_server.url + "/login", follow_redirects=False)
        assert resp.status_code == 502 and "cannot be reached" in resp.text
        assert "Alice Liddell" in client.get(sso_server.url + "/").text
