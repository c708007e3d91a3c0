"""Fixtures for SSO: a real OpenID provider (``oidc-provider`` from npm, tests/oidc) on
loopback, and the real corral server app configured against it.

The provider's npm package is installed into tests/oidc/node_modules at first use (pinned by
tests/oidc/package.json and its lock file). Users log in through the provider's own
development login form (any password); a helper drives that form with httpx, the browser
tests drive it with Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require, require_tools

OIDC_DIR = Path(__file__).resolve().parents[2] / "oidc"
USERS = {
    "alice": {"email": "alice@example.com", "name": "Alice Liddell", "groups": ["web"]},
    "bob": {"email": "bob@example.com", "name": "Bob Builder", "groups": []},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def oidc_modules() -> Path:
    require_tools("node", "npm")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=OIDC_DIR, check=True,
                       capture_output=True, timeout=300)
    return OIDC_DIR


class Provider:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.path = root / "idp.json"
        self.secret_file = root / "client-secret"
        self.secret_file.write_text("s3cret-for-tests\n")
        self.conf: dict[str, Any] = {
            "port": self.port, "keys_file": str(root / "idp-keys.json"), "device_flow": True,
            "clients": [{"client_id": "corral", "client_secret": "s3cret-for-tests",
                         "redirect_uris": []}],
            "users": json.loads(json.dumps(USERS))}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "idp.log"
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.conf))
        tmp.replace(self.path)

    def register(self, redirect_uri: str) -> None:
        self.conf["clients"][0]["redirect_uris"].append(redirect_uri)
        self.save()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["node", str(OIDC_DIR / "provider.mjs"),
                                          str(self.path)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=1)
                return
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the OpenID provider did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def idp(oidc_modules: Path, tmp_path: Path) -> Iterator[Provider]:
    provider = Provider(tmp_path)
    provider.start()
    yield provider
    provider.stop()


class SsoServer:
    def __init__(self, url: str, db_url: str, app: Any, kek: Path) -> None:
        self.url, self.db_url, self.app, self.kek = url, db_url, app, kek

    def db(self) -> Any:
        from corral.server.db import Database

        return Database(self.db_url)

    def token(self, role: str = "owner") -> str:
        import datetime as dt

        from corral.server.local import create_token
        db = self.db()
        try:
            return create_token(db, name=f"test-{role}", role=role, team=None,
                                ttl=dt.timedelta(days=1))
        finally:
            db.dispose()


@pytest.fixture
def sso_server(idp: Provider, tmp_path: Path, kek_file: Path) -> Iterator[SsoServer]:
    """The real app under uvicorn on loopback, its OIDC client registered with ``idp``."""
    import uvicorn

    from corral.server.app import create_app
    from corral.server.config import OidcConfig, ServerConfig
    from corral.server.db import Database
    from corral.server.migrate import upgrade

    db_url = f"sqlite:///{tmp_path / 'server.db'}"
    db = Database(db_url)
    upgrade(db.engine)
    db.dispose()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    idp.register(url + "/auth/callback")
    cfg = ServerConfig(db=db_url, kek_file=kek_file, listen=f"127.0.0.1:{port}",
                       oidc=OidcConfig(issuer=idp.issuer, client_id="corral",
                                       client_secret_file=idp.secret_file,
                                       scopes=["openid", "email", "profile", "groups",
                                               "offline_access"]))
    app = create_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield SsoServer(url, db_url, app, kek_file)
    server.should_exit = True
    thread.join(10)


def idp_login(client: httpx.Client, start: str, login: str, stop_at: str) -> str:
    """Follow ``start`` through the provider's login form as ``login``; return the first
    redirect whose URL starts with ``stop_at`` (not followed)."""
    url = start
    for _ in range(20):
        resp = client.get(url, follow_redirects=False)
        if resp.status_code in (302, 303):
            url = urllib.parse.urljoin(url, resp.headers["location"])
            if url.startswith(stop_at):
                return url
            continue
        assert resp.status_code == 200, (url, resp.status_code, resp.text[:500])
        form = re.search(r'<form[^>]*action="([^"]+)"', resp.text)
        assert form, resp.text[:500]
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                                 resp.text))
        fields.update(login=login, password="x")
        resp = client.post(urllib.parse.urljoin(url, form.group(1)), data=fields,
                           follow_redirects=False)
        assert resp.status_code in (302, 303), resp.text[:500]
        url = urllib.parse.urljoin(url, resp.headers["location"])
        if url.startswith(stop_at):
            return url
    raise AssertionError("the login did not come back")


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    require(os.path.exists(path), "Debian's chromium (scripts/sysdeps.sh)")
    return path
