"""The real ``corral server`` process: replicas on one PostgreSQL behave as one, bodies are
bounded (413/422, memory stays flat), an unreachable database is a 503, an unknown schema is
refused, and the CLI drives it (team, project, agent, policy push/pull, creds)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import Postgres, Served, cli


def _token(db_url: str) -> str:
    return Served("", db_url, Path()).token()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_two_replicas_on_one_postgresql_behave_as_one(postgres: Postgres, spawn_server: Any,
                                                      db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("replicas share PostgreSQL; the SQLite server is embedded")
    one, _ = spawn_server(db_url)
    two, _ = spawn_server(db_url)
    env = {"CORRAL_TOKEN": _token(db_url), "CORRAL_SERVER": one}
    cli("team", "create", "web", env=env)
    cli("project", "create", "shop", "--team", "web", "--require-server", env=env)
    env["CORRAL_SERVER"] = two
    projects = json.loads(cli("project", "list", "--json", env=env).stdout)["projects"]
    assert [(p["name"], p["team"], p["require_server"]) for p in projects] == [
        ("shop", "web", True)]
    cli("agent", "create", "release-bot", "--project", "shop", env=env)
    env["CORRAL_SERVER"] = one
    assert "release-bot" in cli("agent", "list", "--project", "shop", env=env).stdout
    assert "web" in cli("team", "list", env=env).stdout


def test_cli_policy_push_pull_and_creds(spawn_server: Any, db_url: str, tmp_path: Path) -> None:
    url, _ = spawn_server(db_url)
    env = {"CORRAL_TOKEN": _token(db_url), "CORRAL_SERVER": url}
    cli("team", "create", "web", env=env)
    cli("project", "create", "shop", "--team", "web", env=env)
    cli("team", "add-member", "web", "bob@example.com", "--role", "viewer", env=env)
    policy = tmp_path / "team.yaml"
    policy.write_text("name: shop\negress:\n  - host: api.github.com\n    action: nope\n")
    bad = cli("policy", "push", str(policy), "--project", "shop", env=env, check=False)
    assert bad.returncode == 1
    assert "team.yaml:4: egress[0].action: " in bad.stderr, bad.stderr
    policy.write_text("name: shop\negress:\n  - host: api.github.com\n    action: direct\n")
    assert "version 1" in cli("policy", "push", str(policy), "--project", "shop", env=env).stdout
    out = tmp_path / "pulled.yaml"
    cli("policy", "pull", "--project", "shop", "-o", str(out), env=env)
    assert "host: api.github.com" in out.read_text()
    done = cli("creds", "set", "github", "--project", "shop", "--release", env=env,
               stdin="s3cret\n")
    assert "s3cret" not in done.stdout
    listing = httpx.get(url + "/api/v1/projects/shop/credentials",
                        headers={"Authorization": "Bearer " + env["CORRAL_TOKEN"]})
    assert listing.json()["credentials"][0]["release"] is True
    assert "s3cret" not in listing.text
    plain = cli("team", "list", env={**env, "CORRAL_SERVER": "http://192.0.2.1:1"},
                check=False)
    assert plain.returncode == 1 and "http:// only on loopback" in plain.stderr


def test_bodies_are_bounded(spawn_server: Any, db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the bound is in the HTTP layer; once is enough")
    url, proc = spawn_server(db_url, "max_body: 65536\n")
    token = _token(db_url)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    big = httpx.post(url + "/api/v1/teams", headers=headers, content=b"x" * 70000)
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    # a declared length far over the bound: refused before a byte of the body is read
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /api/v1/teams HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n"
                  b"Content-Type: application/json\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 413")
    before = _rss_kib(proc.pid)
    for _ in range(3):  # 3 x 64 MiB chunked: each is cut at the bound, never held
        def chunks() -> Any:
            for _ in range(1024):
                yield b"[" * 65536
        try:
            resp = httpx.post(url + "/api/v1/teams", headers=headers, content=chunks(),
                              timeout=30)
            assert resp.status_code == 413
        except httpx.TransportError:
            pass  # the server answered and closed while we were still sending
    assert _rss_kib(proc.pid) - before < 32 * 1024
    malformed = [(b"{", 422, "invalid"), (b"[" * 60000, 400, "bad_request"),  # too deep
                 (b'{"name": "' + b"a" * 500 + b'"}', 422, "invalid"),
                 (json.dumps({"name": "\ud800"}).encode(), 422, "invalid")]
    for body, status, code in malformed:
        resp = httpx.post(url + "/api/v1/teams", headers=headers, content=body)
        assert resp.status_code == status, (body[:20], resp.text)
        assert resp.json()["error"]["code"] == code
    assert httpx.get(url + "/healthz").json()["ok"] is True  # still serving


def test_database_unreachable_is_503(spawn_server: Any, db_url: str, postgres: Postgres,
                                     tmp_path: Path) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL: a database that goes away")
    from sqlalchemy.engine import make_url

    name = make_url(db_url).database
    token = _token(db_url)
    url, _ = spawn_server(db_url)
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(url + "/api/v1/teams", headers=headers).status_code == 200
    postgres.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
    postgres.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE datname = '{name}'")
    resp = httpx.get(url + "/api/v1/teams", headers=headers, timeout=30)
    assert resp.status_code == 503, resp.text
    assert resp.json() == {"error": {"code": "database_unavailable",
                                     "message": "the server's database is unavailable; "
                                                "retry later"}}
    postgres.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    assert httpx.get(url + "/api/v1/teams", headers=headers).status_code == 200
    # never reachable at all: the server starts and answers 503 until it is
    nowhere = f"postgresql://postgres@/x?host={tmp_path / 'no-socket-here'}"
    url2, _ = spawn_server(nowhere)
    resp = httpx.get(url2 + "/api/v1/teams", headers=headers, timeout=30)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "database_unavailable"


def test_unknown_schema_is_refused(db_url: str, tmp_path: Path) -> None:
    from sqlalchemy import text

    from corral.server.db import Database

    db = Database(db_url)
    with db.session() as session:
        session.execute(text("UPDATE alembic_version SET version_num = 'ffffffff'"))
    db.dispose()
    done = cli("server", "--listen", "127.0.0.1:1", env={"CORRAL_DB_URL": db_url,
                                                        "CORRAL_HOME": str(tmp_path)},
               check=False)
    assert done.returncode == 1
    assert "schema revision ffffffff is unknown" in done.stderr, done.stderr
