"""Web sessions and login limits on a real database (SQLite and PostgreSQL): idle and absolute
expiry, logout of every session of a disabled user, the cookie's flags behind TLS, and the
per-client and per-user login rate limits (corral/server/web/session.py, oidc/ratelimit.py)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import Response
from starlette.requests import Request

from corral.server.config import ServerConfig
from corral.server.db import Database
from corral.server.errors import ApiError
from corral.server.models import User, WebSession, utcnow
from corral.server.oidc import ratelimit
from corral.server.web import session as websession


def _request(config: ServerConfig, cookie: str | None = None) -> Request:
    headers = [(b"cookie", f"{websession.cookie_name(config)}={cookie}".encode())] if cookie \
        else []
    app = SimpleNamespace(state=SimpleNamespace(config=config))
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "app": app, "query_string": b""})


def _signed_in(db: Database, config: ServerConfig) -> tuple[str, int]:
    with db.session() as s:
        user = User(email="alice@example.com", name="Alice", idp_subject="alice")
        s.add(user)
        s.flush()
        response = Response()
        current = websession.start(_request(config), response, s, user)
        return current.sid, user.id


def _age(db: Database, **fields: Any) -> None:
    with db.session() as s:
        row = s.query(WebSession).one()
        for name, value in fields.items():
            setattr(row, name, value)


def _live(db: Database, config: ServerConfig, sid: str) -> bool:
    with db.session() as s:
        return websession.current(_request(config, sid), s) is not None


def test_idle_and_absolute_expiry(db_url: str) -> None:
    db, config = Database(db_url), ServerConfig()
    sid, _ = _signed_in(db, config)
    assert _live(db, config, sid)
    now = utcnow()
    _age(db, last_seen_at=now - websession.IDLE + dt.timedelta(minutes=5))
    assert _live(db, config, sid)  # used within the idle period: still signed in
    _age(db, last_seen_at=now - websession.IDLE - dt.timedelta(seconds=1))
    assert not _live(db, config, sid)  # idle too long
    _age(db, last_seen_at=now, expires_at=now - dt.timedelta(seconds=1))
    assert not _live(db, config, sid)  # past the absolute limit, however recently used
    db.dispose()


def test_disabling_a_user_ends_every_session(db_url: str) -> None:
    db, config = Database(db_url), ServerConfig()
    sid, user_id = _signed_in(db, config)
    with db.session() as s:
        s.get(User, user_id).disabled = True  # type: ignore[union-attr]
    assert not _live(db, config, sid)
    with db.session() as s:
        s.get(User, user_id).disabled = False  # type: ignore[union-attr]
        websession.end_all(s, user_id)
    assert not _live(db, config, sid)  # revoked rows stay dead even for an enabled user
    db.dispose()


@pytest.mark.parametrize(("public_url", "name", "secure"), [
    ("https://corral.example.com", "__Host-corral_session", True),
    (None, "corral_session", False),
])
def test_cookie_flags(db_url: str, public_url: str | None, name: str, secure: bool) -> None:
    db = Database(db_url)
    config = ServerConfig(public_url=public_url)
    with db.session() as s:
        user = User(email="bob@example.com", name="Bob", idp_subject="bob")
        s.add(user)
        s.flush()
        response = Response()
        websession.start(_request(config), response, s, user)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(name + "=")
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite"} <= flags and "domain" not in flags
    assert ("secure" in flags) is secure
    assert "samesite=lax" in cookie.lower() and "path=/" in cookie.lower()
    db.dispose()


@pytest.mark.parametrize("kind", ["client", "user"])
def test_login_attempts_are_limited(db_url: str, kind: str) -> None:
    db = Database(db_url)
    limit = ratelimit.LIMITS[kind]
    with db.session() as s:
        for _ in range(limit):
            ratelimit.count(s, kind, "203.0.113.7" if kind == "client" else "alice")
        with pytest.raises(ApiError) as info:
            ratelimit.count(s, kind, "203.0.113.7" if kind == "client" else "alice")
        assert info.value.status == 429
        ratelimit.count(s, kind, "someone-else")  # counted per client / per user
    db.dispose()


def test_behind_tls_only_the_host_only_cookie_is_read(db_url: str) -> None:
    """A sibling host (``Domain=.example.com``) or a plain-http page can plant a cookie named
    ``corral_session`` but not ``__Host-corral_session`` (the browser refuses that prefix with a
    Domain, without Secure, or off ``Path=/``): behind TLS the server reads only the latter,
    so a planted session id is never one it accepts."""
    db, config = Database(db_url), ServerConfig(public_url="https://corral.example.com")
    sid, _ = _signed_in(db, config)
    assert _live(db, config, sid)
    planted = _request(config)
    planted.scope["headers"] = [(b"cookie", f"corral_session={sid}".encode())]
    with db.session() as s:
        assert websession.current(planted, s) is None
    db.dispose()
