"""Least privilege of the stored login and step-up (PLATFORM.md "Identity and tokens", "Who
may decide an approval"): a process running as the user with only the stored login token can
neither approve its own held call nor push a wider policy; a step-up token from a new login
can. Tokens come from real logins through the real OpenID provider (the CLI's loopback
flow, its browser half driven with httpx)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import secrets
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import httpx

from tests.server.sso.conftest import Provider, SsoServer, idp_login

CORRAL = str(Path(sys.executable).parent / "corral")
CATCH = "http://127.0.0.1:9/cb"  # nothing listens: the redirect is read, not followed


def cli_login(server: SsoServer, user: str, *, step_up: bool = False,
              verifier: str | None = None) -> dict[str, Any]:
    """A login token as ``corral login`` gets one through the loopback redirect."""
    verifier = verifier or secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"=").decode()
    query = urllib.parse.urlencode({"redirect_uri": CATCH, "code_challenge": challenge,
                                    "state": "st4te-xyz", "step_up": str(step_up).lower()})
    with httpx.Client(timeout=30) as browser:
        back = idp_login(browser, f"{server.url}/auth/cli?{query}", user, CATCH)
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(back).query)["code"][0]
    resp = httpx.post(server.url + "/auth/cli/token",
                      json={"code": code, "code_verifier": verifier}, timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _api(server: SsoServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/api/v1", timeout=30,
                        headers={"Authorization": f"Bearer {token}"})


def _setup(server: SsoServer) -> None:
    with _api(server, server.token()) as owner:
        assert owner.post("/teams", json={"name": "web"}).status_code == 201
        assert owner.post("/teams/web/projects", json={"name": "shop"}).status_code == 201
        assert owner.put("/teams/web/members/alice@example.com",
                         json={"role": "admin"}).status_code in (200, 201)


def test_the_stored_login_cannot_approve_its_own_call_nor_widen_its_policy(
        sso_server: SsoServer, tmp_path: Path) -> None:
    _setup(sso_server)
    login = cli_login(sso_server, "alice")
    assert login["step_up"] is False
    with _api(sso_server, login["token"]) as alice:
        run = alice.post("/projects/shop/runs", json={"host": "h", "sandbox": "s1",
                                                      "policy_digest": "0" * 64})
        assert run.status_code == 201, run.text
        assert run.json()["run"]["human"] == "alice@example.com"
        sandbox = run.json()["token"]
        run_id = run.json()["run"]["id"]
    with _api(sso_server, sandbox) as agent:
        held = agent.post(f"/runs/{run_id}/approvals", json={"tool": "exec", "args": {}})
        assert held.status_code == 201, held.text
        approval = held.json()["approval"]["id"] if "approval" in held.json() \
            else held.json()["id"]
    # The agent's process: runs as the user, reads the user's stored login, nothing else.
    home = tmp_path / "home"
    (home / ".config" / "corral").mkdir(parents=True)
    stored = home / ".config" / "corral" / "login.json"
    stored.write_text(json.dumps(
        {"server": sso_server.url, "token": login["token"], "id": login["id"],
         "email": login["email"], "expires_at": login["expires_at"]}))
    stored.chmod(0o600)  # as corral login writes it (every reader refuses a wider mode)
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_TOKEN", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), CORRAL_SERVER=sso_server.url)
    wide = tmp_path / "wide.yaml"
    wide.write_text("egress:\n  - host: '*'\n    action: allow\n")
    for argv in (["approvals", "approve", approval, "--project", "shop"],
                 ["policy", "push", str(wide), "--project", "shop"]):
        done = subprocess.run([CORRAL, *argv], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode != 0, (argv, done.stdout)
        assert "step-up" in done.stderr, (argv, done.stderr)
    with _api(sso_server, login["token"]) as alice:
        assert alice.get("/projects/shop/approvals").json()["approvals"][0]["status"] \
            == "pending"
    # A step-up from a new login (short-lived, printed, never stored) may decide.
    step = cli_login(sso_server, "alice", step_up=True)
    assert step["step_up"] is True
    done = subprocess.run([CORRAL, "approvals", "approve", approval, "--project", "shop"],
                          env={**env, "CORRAL_TOKEN": step["token"]}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_loopback_code_needs_the_pkce_verifier(sso_server: SsoServer) -> None:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"=").decode()
    query = urllib.parse.urlencode({"redirect_uri": CATCH, "code_challenge": challenge,
                                    "state": "st4te-xyz"})
    with httpx.Client(timeout=30) as browser:
        back = idp_login(browser, f"{sso_server.url}/auth/cli?{query}", "alice", CATCH)
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(back).query)["code"][0]
    wrong = httpx.post(sso_server.url + "/auth/cli/token",
                       json={"code": code, "code_verifier": secrets.token_urlsafe(48)})
    assert wrong.status_code == 400 and "code_verifier" in wrong.text
    # The code is spent by the failed try: the right verifier is too late.
    late = httpx.post(sso_server.url + "/auth/cli/token",
                      json={"code": code, "code_verifier": verifier})
    assert late.status_code == 400
    missing = httpx.post(sso_server.url + "/auth/cli/token", json={"code": code})
    assert missing.status_code == 422


def test_loopback_redirect_must_be_loopback(sso_server: SsoServer) -> None:
    for uri in ("http://evil.example:80/cb", "https://127.0.0.1:9/cb", "http://127.0.0.1/cb",
                "http://10.0.0.1:9/cb"):
        query = urllib.parse.urlencode({"redirect_uri": uri, "code_challenge": "a" * 43,
                                        "state": "st4te-xyz"})
        resp = httpx.get(f"{sso_server.url}/auth/cli?{query}")
        assert resp.status_code == 400, uri


def test_groups_follow_the_idp_and_disable_revokes_everything(
        sso_server: SsoServer, idp: Provider) -> None:
    with _api(sso_server, sso_server.token()) as owner:
        assert owner.post("/teams", json={"name": "web"}).status_code == 201
    login = cli_login(sso_server, "alice")
    with _api(sso_server, login["token"]) as alice:
        assert alice.get("/whoami").json()["teams"] == {"web": "member"}
    # Dropped from the group at the IdP: the next login takes the membership away.
    idp.conf["users"]["alice"]["groups"] = []
    idp.save()
    again = cli_login(sso_server, "alice")
    with _api(sso_server, again["token"]) as alice:
        assert alice.get("/whoami").json()["teams"] == {}
    with _api(sso_server, sso_server.token()) as owner:
        done = owner.post("/users/alice@example.com/disable")
        assert done.status_code == 200 and done.json()["tokens_revoked"] == 2
    for token in (login["token"], again["token"]):
        with _api(sso_server, token) as alice:
            assert alice.get("/whoami").status_code == 401


def test_a_user_the_idp_forgets_loses_the_token_at_the_next_recheck(
        sso_server: SsoServer, idp: Provider) -> None:
    from sqlalchemy import update

    from corral.server.models import Token

    login = cli_login(sso_server, "alice")
    del idp.conf["users"]["alice"]
    idp.save()
    with _api(sso_server, login["token"]) as alice:
        assert alice.get("/whoami").status_code == 200  # checked at login, not due yet
        db = sso_server.db()
        with db.session() as s:
            s.execute(update(Token).where(Token.id == login["id"]).values(
                idp_checked_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
            s.commit()
        db.dispose()
        resp = alice.get("/whoami")
        assert resp.status_code == 401 and "no longer vouches" in resp.text
