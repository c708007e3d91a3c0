"""Fixtures for the web UI: the real app (SQLite and PostgreSQL) signed into through the real
OpenID provider of tests/server/sso, seeded with two teams, and helpers that drive runs the
way launchers do (register, ship hashed events, ask approvals) over the real API.

Users: alice is an admin of team ``web`` (project ``shop``), carol a viewer there, bob the
owner of team ``other`` (project ``vault``) and an outsider to ``web``.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.audit.events import GENESIS, canonical_json, event_body, event_hash
from tests.server.sso.conftest import Provider, free_port, idp, idp_login, oidc_modules

__all__ = ["Ui", "idp", "oidc_modules"]

DIGEST = "ab" * 32
USERS = {"carol": {"email": "carol@example.com", "name": "Carol Viewer", "groups": []}}


class Chain:
    """A run's audit chain, hashed exactly as corral's store hashes it."""

    def __init__(self, sandbox: str) -> None:
        self.sandbox, self.seq, self.prev = sandbox, 0, GENESIS
        self.actor = canonical_json({"identity": "alice@example.com", "uid": 0, "user": "root"})

    def event(self, type_: str, **data: Any) -> dict[str, Any]:
        self.seq += 1
        body = canonical_json(data)
        ts = time.time_ns() // 1000
        h = event_hash(event_body(actor=self.actor, data=body, prev=self.prev,
                                  sandbox=self.sandbox, seq=self.seq, ts=ts, type_=type_, v=1))
        out = {"seq": self.seq, "ts": ts, "type": type_, "actor": self.actor, "data": body,
               "v": 1, "prev": self.prev, "hash": h}
        self.prev = h
        return out


class Run:
    def __init__(self, ui: Ui, run_id: str, token: str, sandbox: str) -> None:
        self.ui, self.id, self.token = ui, run_id, token
        self.chain = Chain(sandbox)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.ui.url + "/api/v1", timeout=60,
                            headers={"Authorization": f"Bearer {self.token}"})

    def ship(self, *events: tuple[str, dict[str, Any]]) -> None:
        batch = [self.chain.event(t, **d) for t, d in events]
        with self.api() as c:
            resp = c.post(f"/runs/{self.id}/events", json={"events": batch})
            assert resp.status_code == 200, resp.text

    def ask(self, tool: str, args: dict[str, Any], rule: str) -> str:
        with self.api() as c:
            resp = c.post(f"/runs/{self.id}/approvals", json={"tool": tool, "args": args,
                                                               "rule": rule})
            assert resp.status_code == 201, resp.text
            return str(resp.json()["id"])

    def wait(self, approval: str, out: dict[str, Any]) -> threading.Thread:
        """Long-poll the decision in a thread, as a held call does; the answer lands in out."""

        def poll() -> None:
            with self.api() as c:
                out["answer"] = c.get(f"/runs/{self.id}/approvals/{approval}?wait=50").json()
                out["at"] = time.monotonic()

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        return thread

    def end(self) -> None:
        with self.api() as c:
            assert c.post(f"/runs/{self.id}/end", json={"exit_status": 0}).status_code == 200


class Ui:
    def __init__(self, url: str, db_url: str) -> None:
        self.url, self.db_url = url, db_url

    def db(self) -> Any:
        from corral.server.db import Database

        return Database(self.db_url)

    def login(self, client: httpx.Client, user: str) -> str:
        """Sign ``client`` in through the real provider; returns the page's CSRF token."""
        back = idp_login(client, f"{self.url}/login", user, self.url + "/auth/callback")
        assert client.get(back, follow_redirects=False).status_code == 303
        home = client.get(self.url + "/")
        assert home.status_code == 200, home.text[:300]
        found = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', home.text)
        assert found, home.text[:500]
        return found.group(1)

    def start_run(self, project: str = "shop", agent: str | None = None,
                  command: list[str] | None = None, human: str = "alice@example.com") -> Run:
        from corral.server.local import create_token

        db = self.db()
        try:
            token = create_token(db, name="launcher", role="member", team="web",
                                 ttl=dt.timedelta(hours=1))
        finally:
            db.dispose()
        sandbox = f"sb-{free_port()}"
        body: dict[str, Any] = {"host": "build-7", "sandbox": sandbox, "policy_digest": DIGEST,
                                "human": human, "command": command or ["claude"]}
        if agent:
            body["agent"] = agent
        with httpx.Client(base_url=self.url + "/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            resp = c.post(f"/projects/{project}/runs", json=body)
            assert resp.status_code == 201, resp.text
            answer = resp.json()
        return Run(self, answer["run"]["id"], answer["token"], sandbox)


def seed(db_url: str) -> None:
    from corral.server.db import Database
    from corral.server.models import Agent, Membership, Project, Team, User

    db = Database(db_url)
    with db.session() as s:
        web, other = Team(name="web"), Team(name="other")
        s.add_all([web, other])
        s.flush()
        users = {n: User(email=f"{n}@example.com") for n in ("alice", "bob", "carol")}
        s.add_all(users.values())
        s.flush()
        s.add_all([Membership(team_id=web.id, user_id=users["alice"].id, role="admin"),
                   Membership(team_id=web.id, user_id=users["carol"].id, role="viewer"),
                   Membership(team_id=other.id, user_id=users["bob"].id, role="owner")])
        shop = Project(name="shop", team_id=web.id)
        vault = Project(name="vault", team_id=other.id)
        s.add_all([shop, vault])
        s.flush()
        s.add(Agent(project_id=shop.id, name="claude-code"))
        s.commit()
    db.dispose()


@pytest.fixture
def make_ui(idp: Provider, tmp_path: Path, kek_file: Path) -> Iterator[Callable[[str], Ui]]:
    """Start the real app on ``db_url``, its OIDC client registered with the real provider."""
    import uvicorn

    from corral.server.app import create_app
    from corral.server.config import OidcConfig, ServerConfig

    idp.conf["users"].update(USERS)
    idp.save()
    servers: list[tuple[Any, threading.Thread]] = []

    def start(db_url: str) -> Ui:
        seed(db_url)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        idp.register(url + "/auth/callback")
        cfg = ServerConfig(db=db_url, kek_file=kek_file, listen=f"127.0.0.1:{port}",
                           oidc=OidcConfig(issuer=idp.issuer, client_id="corral",
                                           client_secret_file=idp.secret_file,
                                           scopes=["openid", "email", "profile"]))
        server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port,
                                               log_level="warning",
                                               timeout_graceful_shutdown=2))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        servers.append((server, thread))
        return Ui(url, db_url)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def ui(make_ui: Callable[[str], Ui], db_url: str) -> Ui:
    """The UI on SQLite and on PostgreSQL."""
    return make_ui(db_url)


@pytest.fixture
def ui_sqlite(make_ui: Callable[[str], Ui], tmp_path: Path) -> Ui:
    """The UI on SQLite only (the browser tests: the backend is covered by ``ui``)."""
    from corral.server.db import Database
    from corral.server.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'ui.db'}"
    db = Database(url)
    upgrade(db.engine)
    db.dispose()
    return make_ui(url)
