"""The relay's decision for one request (``relay.grant``) against a real database, SQLite and
PostgreSQL: every change to the token, the run, the project's policy or the credential is seen
by the very next request (nothing is cached but composed policies, keyed by the attached
version ids read each time); each refusal keeps its reason and its ``auth.refused`` record;
the ``credential.inject`` event is committed before ``grant`` returns."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from corral.proxy.relay_wire import Preamble
from corral.server.crypto import load_kek
from corral.server.db import Database
from corral.server.models import AdminEvent, Credential, Project, Run, Team, Token, utcnow
from corral.server.policies import push, resolve_project
from corral.server.relay.grant import RelayRefused, grant
from corral.server.runs import end, register
from corral.server.tokens import issue

POLICY = """name: relay
credentials:
  tok: {secret: "server:tok", header: Authorization, format: "Bearer {secret}"}
egress:
  - host: api.example.com
    ports: [443]
    action: platform
    credential: tok
"""
PRE = Preamble("GET", "api.example.com", 443, "/v1/echo?q=1", [(b"accept", b"*/*")], True)


class World:
    def __init__(self, db: Database, kek: Path) -> None:
        self.db, self.kek = db, kek
        with db.session() as s:
            team = Team(name="web")
            s.add(team)
            s.flush()
            self.project = Project(name="shop", team_id=team.id)
            s.add(self.project)
            s.flush()
            push(s, scope=f"p{self.project.id}", project=self.project, filename="relay.yaml",
                 text=POLICY, author="me")
            s.flush()
            digest = resolve_project(s, self.project)[1].digest
            run, self.secret = register(s, self.project, actor="me", human="ann@example.com",
                                        host="h", sandbox="bwrap", policy_digest=digest,
                                        agent=None, command=["agent"])
            self.run = run.id
        self.set_credential("value-one")

    def set_credential(self, value: str) -> None:
        sealed = load_kek(self.kek).seal(self.project.id, "tok", value.encode())
        with self.db.session() as s:
            row = s.scalar(select(Credential).where(Credential.project_id == self.project.id))
            if row is None:
                row = Credential(project_id=self.project.id, name="tok", updated_by="me",
                                 ciphertext=b"", nonce=b"", wrapped_key=b"", key_nonce=b"",
                                 kek_id="")
                s.add(row)
            (row.ciphertext, row.nonce, row.wrapped_key, row.key_nonce,
             row.kek_id) = sealed

    def grant(self, secret: str | None = None, run: str | None = None) -> Any:
        return grant(self.db, self.kek, run or self.run, secret or self.secret, PRE, "10.0.0.9")

    def refused(self, **kwargs: Any) -> RelayRefused:
        with pytest.raises(RelayRefused) as err:
            self.grant(**kwargs)
        return err.value

    def events(self, action: str) -> list[AdminEvent]:
        with self.db.session() as s:
            return list(s.scalars(select(AdminEvent).where(AdminEvent.action == action)
                                  .order_by(AdminEvent.id)))


@pytest.fixture
def world(db_url: str, kek_file: Path) -> Iterator[World]:
    db = Database(db_url)
    try:
        yield World(db, kek_file)
    finally:
        db.dispose()


def test_grant_injects_and_records_before_returning(world: World) -> None:
    granted = world.grant()
    assert granted.secret == "value-one" and granted.binding.name == "tok"
    # committed: another connection sees the event as soon as grant returned
    (event,) = world.events("credential.inject")
    assert (event.actor, event.target, event.team_id) == ("ann@example.com", "shop/tok",
                                                          world.project.team_id)
    assert event.detail == {"run": world.run, "binding": "tok", "host": "api.example.com",
                            "method": "GET", "path": "/v1/echo", "rule": "relay.yaml:5"}
    assert "value-one" not in repr(event.detail)
    with world.db.session() as s:
        assert s.scalar(select(Credential.last_used_at)) is not None


def test_the_credential_row_is_stamped_as_used_once_a_minute(world: World) -> None:
    # every use is a credential.inject event; the row's last_used_at, like a token's, is
    # written again only when it is a minute old (a write per request to one hot row)
    from corral.server.relay.reads import STAMP_EVERY

    world.grant()
    with world.db.session() as s:
        stamped = s.scalar(select(Credential.last_used_at))
    world.grant()
    with world.db.session() as s:
        assert s.scalar(select(Credential.last_used_at)) == stamped
        s.execute(update(Credential).values(last_used_at=utcnow() - STAMP_EVERY))
    world.grant()
    with world.db.session() as s:
        assert s.scalar(select(Credential.last_used_at)) > stamped
    assert len(world.events("credential.inject")) == 3


def test_a_pushed_policy_refuses_the_next_request(world: World) -> None:
    world.grant()
    with world.db.session() as s:
        project = s.get(Project, world.project.id)
        push(s, scope=f"p{world.project.id}", project=project, filename="relay.yaml",
             text=POLICY + "  - {host: other.example.com, action: inspect}\n", author="me")
    err = world.refused()
    assert (err.status, err.code) == (403, "policy_revoked")


def test_a_rotated_credential_is_used_by_the_next_request(world: World) -> None:
    assert world.grant().secret == "value-one"
    world.set_credential("value-two")
    assert world.grant().secret == "value-two"


def test_an_ended_run_refuses_the_next_request(world: World) -> None:
    world.grant()
    with world.db.session() as s:
        run = s.get(Run, world.run)
        end(s, run, s.get(Project, world.project.id), actor="me", exit_status=0, reason=None)
    err = world.refused()
    assert (err.status, err.code) == (401, "unauthorized") and "run ended" in err.message
    (refusal,) = world.events("auth.refused")
    assert refusal.detail["client"] == "10.0.0.9" and "run ended" in refusal.detail["reason"]


@pytest.mark.parametrize(("change", "status", "says"), [
    ({"revoked_at": utcnow()}, 401, "the run ended"),
    ({"expires_at": utcnow() - dt.timedelta(seconds=1)}, 401, "expired"),
    ({"audience": "corral-api"}, 401, "only a run's sandbox token"),
    ({"kind": "service"}, 401, "only a run's sandbox token"),
])
def test_a_changed_token_refuses_the_next_request(world: World, change: dict[str, Any],
                                                  status: int, says: str) -> None:
    world.grant()
    with world.db.session() as s:
        s.execute(update(Token).where(Token.run_id == world.run).values(**change))
    err = world.refused()
    assert err.status == status and says in err.message, err.message
    assert len(world.events("auth.refused")) == 1


def test_a_run_no_longer_running_refuses_with_its_token_alive(world: World) -> None:
    world.grant()
    with world.db.session() as s:
        s.execute(update(Run).where(Run.id == world.run).values(status="lost"))
    err = world.refused()
    assert (err.status, err.code) == (403, "run_ended")


def test_another_runs_token_or_a_bad_one_is_refused(world: World) -> None:
    with world.db.session() as s:
        other, secret = register(s, s.get(Project, world.project.id), actor="me", human="bob",
                                 host="h", sandbox="bwrap", policy_digest="0" * 64,
                                 agent=None, command=["x"])
        _, service = issue(s, name="svc", kind="service", role="owner",
                           ttl=dt.timedelta(days=1), created_by="me")
    err = world.refused(secret=secret)
    assert err.status == 401 and f"belongs to run {other.id}" in err.message
    assert world.refused(secret=service).status == 401
    assert "malformed" in world.refused(secret="crl_short").message
    assert "unknown" in world.refused(secret="crl_" + "A" * 43).message
    assert len(world.events("auth.refused")) == 4
    assert world.events("credential.inject") == []
