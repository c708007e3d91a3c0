from __future__ import annotations

import json

import pytest

from corral.audit.events import (
    GENESIS,
    SCHEMAS,
    Actor,
    EventError,
    EventType,
    canonical_json,
    check_sandbox_id,
    event_body,
    validate,
)


def test_formatted_body_is_canonical_json_of_the_event() -> None:
    actor = Actor("alice", 1000, "bob", 1001, 1001, None)
    data = {"host": "api.example.com", "rule": "p.yaml:3", "path": '/ü"x', "status": 403}
    event = {
        "v": 1,
        "sandbox": "sb-1",
        "seq": 7,
        "ts": 1_700_000_000_123_456,
        "type": "proxy.deny",
        "actor": json.loads(actor.to_json()),
        "data": data,
        "prev": GENESIS,
    }
    body = event_body(
        actor=actor.to_json(),
        data=canonical_json(data),
        prev=GENESIS,
        sandbox="sb-1",
        seq=7,
        ts=1_700_000_000_123_456,
        type_="proxy.deny",
        v=1,
    )
    assert body == json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def test_every_event_type_is_registered() -> None:
    assert set(SCHEMAS) == {str(t) for t in EventType}


@pytest.mark.parametrize(
    ("type_", "data", "message"),
    [
        ("proxy.nope", {}, "unknown audit event type"),
        ("proxy.deny", {"host": "x"}, "missing required field 'rule'"),
        ("proxy.deny", {"host": "x", "rule": "r", "status": "200"}, "must be int"),
        ("proxy.deny", {"host": "x", "rule": "r", "status": True}, "must be int"),
        ("exec.start", {"argv": ["ls", 3]}, "must be list"),
        # no slot for a secret: an injection is recorded by binding name only
        ("credential.inject", {"binding": "gh", "host": "x", "value": "s3cr3t"}, "unknown field"),
    ],
)
def test_invalid_events_are_refused(type_: str, data: dict[str, object], message: str) -> None:
    with pytest.raises(EventError, match=message):
        validate(type_, data)


def test_valid_event_passes() -> None:
    validate("proxy.inspect", {"host": "x", "rule": "r", "duration_ms": 1.5, "bytes_in": 3})
    validate("tool.call", {"tool": "exec", "args": {"cmd": "ls", "n": 1}})


@pytest.mark.parametrize("bad", ["", "a b", 'x"y', "../x", "a" * 200, "é"])
def test_sandbox_ids_need_no_json_escaping(bad: str) -> None:
    with pytest.raises(EventError):
        check_sandbox_id(bad)


def test_actor_records_the_sudo_caller_only_when_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_UID", "1234")
    monkeypatch.setenv("SUDO_USER", "carol")
    actor = Actor.current()
    assert actor.uid == 0  # the suite runs as root
    assert (actor.sudo_user, actor.sudo_uid) == ("carol", 1234)
    assert actor.describe() == "root (sudo by carol)"
    monkeypatch.setattr("os.getuid", lambda: 1000)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert Actor.current().sudo_uid is None
