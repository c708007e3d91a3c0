"""The gate and authorization path of the tools service (executor as a local subprocess)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_provider import LocalProvider, local_provider

from corral.policy.types import ExecConfig, FilesConfig
from corral.tools.approvals import ApprovalStore
from corral.tools.service import ToolPolicy, Tools
from corral.tools.session import ShellSession


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalProvider]:
    yield from local_provider(tmp_path)



class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, **fields: Any) -> None:
        self.events.append((event_type, fields))


@pytest.fixture
def tools(provider: Any, corral_env: dict[str, str]) -> Iterator[Tools]:
    policy = ToolPolicy(exec=ExecConfig(mode="allowlist", allow=("echo *", "ls")),
                        files=FilesConfig(approval="writes"), digest="d1")
    session = ShellSession(provider, idle=None)
    t = Tools(policy, session, ApprovalStore(), workspace=str(provider.root), audit=Recorder())
    yield t
    session.close()


def test_gate(tools: Tools) -> None:
    assert not tools.gate("exec", {"command": "echo hi"}).needs_approval
    assert tools.gate("exec", {"command": "echo hi; curl x"}).needs_approval
    assert not tools.gate("read", {"path": "a"}).needs_approval
    assert tools.gate("read", {"path": "/etc/hosts"}).outside
    assert tools.gate("read", {"path": "../x"}).outside
    assert tools.gate("write", {"path": "a", "content": ""}).needs_approval
    assert not tools.gate("fetch", {"url": "http://x"}).needs_approval


def test_held_call_runs_only_after_grant(tools: Tools, provider: Any) -> None:
    args = {"path": "a.txt", "content": "hi"}
    gate = tools.gate("write", args)
    assert not tools.authorize("write", args, gate)
    pending = tools.hold("write", args, gate)
    assert tools.hold("write", args, gate).id == pending.id
    tools.store.decide(pending.id, approve=True)
    other = {"path": "a.txt", "content": "bye"}
    assert not tools.authorize("write", other, tools.gate("write", other))
    assert tools.authorize("write", args, gate)
    tools.run("write", args, gate=gate)
    assert (provider.root / "a.txt").read_text() == "hi"
    assert not tools.authorize("write", args, gate)  # used up


def test_always_rule_for_exec(tools: Tools) -> None:
    args = {"command": "make test", "cwd": ".", "timeout": 5}
    gate = tools.gate("exec", args)
    pending = tools.hold("exec", args, gate)
    tools.store.decide(pending.id, approve=True, always=True)
    assert tools.authorize("exec", args, gate)
    again = {"command": "make test", "cwd": "sub", "timeout": 9}
    assert tools.authorize("exec", again, tools.gate("exec", again))
    other = {"command": "make test2", "cwd": ".", "timeout": 5}
    assert not tools.authorize("exec", other, tools.gate("exec", other))


def test_outside_read_after_approval(tools: Tools, tmp_path: Path) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("data\n")
    args = {"path": str(secret)}
    gate = tools.gate("read", args)
    assert gate.outside and not tools.authorize("read", args, gate)
    tools.store.decide(tools.hold("read", args, gate).id, approve=True)
    assert tools.authorize("read", args, gate)
    assert tools.run("read", args, gate=gate)["content"] == "data\n"
    audit = tools.audit
    assert isinstance(audit, Recorder)
    assert audit.events[-1][0] == "tool.call" and audit.events[-1][1]["ok"]
