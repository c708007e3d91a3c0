"""The must-shows, with real parts only: a login in Chromium through the real OpenID provider
landing on a page with the user's name, and ``corral login`` (the real CLI) through the
device flow with the provider's device page approved in Chromium."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.server.sso.conftest import SsoServer, chromium

CORRAL = str(Path(sys.executable).parent / "corral")


def _browser(p: Any) -> Any:
    return p.chromium.launch(executable_path=chromium(), headless=True,
                             args=["--no-sandbox"])


def _idp_form(page: Any, login: str) -> None:
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "x")
    page.click("button[type=submit]")


def test_chromium_login_lands_on_the_users_name(sso_server: SsoServer, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(sso_server.url + "/")
        page.wait_for_selector("input[name=login]")
        _idp_form(page, "alice")
        page.wait_for_selector("#user-name")
        assert page.url == sso_server.url + "/"
        assert page.inner_text("#user-name") == "Alice Liddell"
        page.screenshot(path=str(tmp_path / "home.png"))
        shot = os.environ.get("CORRAL_SSO_SCREENSHOT")
        if shot:
            page.screenshot(path=shot)
        cookies = {c["name"]: c for c in page.context.cookies()}
        session = cookies["corral_session"]
        assert session["httpOnly"] and session["sameSite"] == "Lax" and session["path"] == "/"
        page.click("#logout")
        page.wait_for_selector("#message")
        assert "session has ended" in page.inner_text("#message")
        browser.close()


def test_corral_login_device_flow_approved_in_the_provider(sso_server: SsoServer,
                                                           tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "CORRAL_SERVER": sso_server.url}
    env.pop("CORRAL_TOKEN", None)
    env.pop("XDG_CONFIG_HOME", None)
    proc = subprocess.Popen([CORRAL, "login"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline() + proc.stderr.readline()
    url = re.search(r"open (\S+)", first)
    assert url, first
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(url.group(1))
        # verification_uri_complete: the code is filled in; confirm it, then log in.
        page.click("button[type=submit]")
        page.wait_for_selector("input[name=login]")
        _idp_form(page, "alice")
        page.wait_for_load_state()
        browser.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert "signed in as alice@example.com" in out
    stored = home / ".config" / "corral" / "login.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    who = subprocess.run([CORRAL, "whoami"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert who.returncode == 0 and who.stdout.startswith("alice@example.com (user)"), who
    tokens = subprocess.run([CORRAL, "token", "list", "--json"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert tokens.returncode == 0 and '"current": true' in tokens.stdout, tokens
    out = subprocess.run([CORRAL, "logout"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and not stored.exists(), out
