"""The approvals store: exact binding, single use, always-rules, expiry, who decided."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from corral.errors import CorralError
from corral.tools.approvals import ApprovalStore, args_digest


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, **fields: Any) -> None:
        self.events.append((event_type, fields))


def _req(store: ApprovalStore, args: dict[str, Any], policy: str = "p1") -> Any:
    return store.request("exec", args, policy_digest=policy, workspace="/w",
                         summary=str(args.get("command")), why="not in exec.allow",
                         scope=str(args.get("command")))


def test_grant_is_single_use_and_bound_to_args(corral_env: dict[str, str]) -> None:
    audit = Recorder()
    store = ApprovalStore(audit=audit)
    args = {"command": "curl x", "timeout": 10}
    pending = _req(store, args)
    assert _req(store, args).id == pending.id  # a retry finds the same request
    assert store.consume("exec", args, "p1") is None
    store.decide(pending.id, approve=True, reason="ok")
    assert store.consume("exec", {"command": "curl y", "timeout": 10}, "p1") is None
    assert store.consume("exec", args, "p2") is None  # other policy
    assert store.consume("exec", args, "p1", principal="bob") is None  # other principal
    assert store.consume("exec", args, "p1", workspace="/elsewhere") is None  # other workspace
    used = store.consume("exec", args, "p1")
    assert used is not None and used.id == pending.id
    assert store.consume("exec", args, "p1") is None  # single use
    kinds = [e for e, _ in audit.events]
    assert kinds == ["approval.request", "approval.decide", "approval.use"]
    assert audit.events[1][1]["reason"] == "ok"


def test_deny_and_double_decision(corral_env: dict[str, str]) -> None:
    store = ApprovalStore()
    pending = _req(store, {"command": "curl x"})
    denied = store.decide(pending.id, approve=False, reason="no")
    assert denied.status == "denied" and denied.decided_by and denied.reason == "no"
    with pytest.raises(CorralError, match="already denied"):
        store.decide(pending.id, approve=True)
    assert store.consume("exec", {"command": "curl x"}, "p1") is None


def test_expiry_counts_as_denied(corral_env: dict[str, str]) -> None:
    audit = Recorder()
    store = ApprovalStore(ttl=0.2, audit=audit)
    pending = _req(store, {"command": "curl x"})
    time.sleep(0.3)
    assert store.get(pending.id).status == "expired"
    with pytest.raises(CorralError, match="already expired"):
        store.decide(pending.id, approve=True)
    assert ("approval.decide", "expired") in [(e, f.get("decision")) for e, f in audit.events]


def test_always_rule_scope(corral_env: dict[str, str]) -> None:
    store = ApprovalStore()
    pending = _req(store, {"command": "make test", "cwd": "a"})
    store.decide(pending.id, approve=True, always=True)
    assert store.allowed_always("exec", "make test", "/w", "p1")
    assert not store.allowed_always("exec", "make test", "/other", "p1")
    assert not store.allowed_always("exec", "make test", "/w", "p2")
    assert not store.allowed_always("exec", "make tests", "/w", "p1")


def test_store_is_root_only(corral_env: dict[str, str]) -> None:
    store = ApprovalStore()
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_digest_is_canonical() -> None:
    assert args_digest({"a": 1, "b": 2}) == args_digest({"b": 2, "a": 1})
    assert args_digest({"a": 1}) != args_digest({"a": "1"})


def test_cli_decides_from_another_process(corral_env: dict[str, str], tmp_path: Path) -> None:
    store = ApprovalStore()
    pending = _req(store, {"command": "curl x"})
    env = {**os.environ, **corral_env, "SUDO_USER": "alice"}
    cli = [sys.executable, "-m", "corral"]
    out = subprocess.run([*cli, "approvals", "list"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert pending.id in out and "curl x" in out
    out = subprocess.run([*cli, "approvals", "show", pending.id], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert '"command": "curl x"' in out and "not in exec.allow" in out
    out = subprocess.run([*cli, "approvals", "approve", pending.id, "--reason", "looks fine"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert "approved" in out
    decided = store.get(pending.id)
    assert decided.status == "approved" and decided.reason == "looks fine"
    assert decided.decided_by is not None and decided.decided_by.startswith("alice")
    bad = subprocess.run([*cli, "approvals", "deny", "nope"], env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "no approval request" in bad.stderr


def test_always_rules_are_listed_and_revoked_from_the_cli(corral_env: dict[str, str]) -> None:
    recorder = Recorder()
    store = ApprovalStore(audit=recorder)
    for command in ("make test", "make lint"):
        store.decide(_req(store, {"command": command}).id, approve=True, always=True)
    env = {**os.environ, **corral_env}
    cli = [sys.executable, "-m", "corral", "approvals"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True)

    listed = run("standing")
    assert listed.returncode == 0 and "make test" in listed.stdout and "/w" in listed.stdout
    rules = {r.summary: r for r in store.standing()}
    assert set(rules) == {"make test", "make lint"}
    done = run("revoke", str(rules["make test"].id))
    assert done.returncode == 0 and "make test" in done.stdout, done.stderr
    assert not store.allowed_always("exec", "make test", "/w", "p1")
    assert store.allowed_always("exec", "make lint", "/w", "p1")  # only the one revoked
    again = run("revoke", str(rules["make test"].id))
    assert again.returncode == 2 and "no standing approval" in again.stderr
    assert run("revoke", "0").returncode == 2 and run("revoke", "x").returncode == 2
    assert [s.summary for s in store.standing()] == ["make lint"]
