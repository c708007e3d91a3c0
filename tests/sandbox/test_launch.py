"""Sandbox lifecycle: a layer that cannot be set up aborts before anything runs and leaves
nothing behind; close() undoes every layer; the audit hook sees each step once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import require_root, require_tools

from corral.audit import SCHEMAS
from corral.errors import CorralError
from corral.sandbox import Sandbox, SandboxSpec, netns, preflight
from corral.sandbox.cgroups import list_corral_cgroups

pytestmark = pytest.mark.root


@pytest.fixture
def ready(corral_env: dict[str, str]) -> dict[str, str]:
    require_root()
    require_tools("bwrap", "nft", "ip")
    return corral_env


def _registry(env: dict[str, str]) -> list[str]:
    reg = Path(env["CORRAL_HOME"]) / "sandboxes"
    return sorted(p.name for p in reg.iterdir() if p.name != ".lock") if reg.exists() else []


def test_broken_netfilter_aborts_and_cleans_up(ready, monkeypatch: pytest.MonkeyPatch) -> None:
    before = set(list_corral_cgroups())
    monkeypatch.setattr(netns, "ruleset", lambda *a: "table inet corral { chain bogus {")
    with pytest.raises(CorralError, match="cannot set up the sandbox: nft failed") as err:
        Sandbox.open(SandboxSpec())
    assert err.value.exit_code == 125
    assert _registry(ready) == []
    assert set(list_corral_cgroups()) <= before


def test_missing_landlock_refuses(ready, monkeypatch: pytest.MonkeyPatch) -> None:
    import corral.sandbox.landlock as landlock

    preflight.check_host.cache_clear()
    monkeypatch.setattr(landlock, "landlock_abi", lambda: 0)
    try:
        with pytest.raises(CorralError, match="no Landlock"):
            Sandbox.open(SandboxSpec())
    finally:
        preflight.check_host.cache_clear()
    assert _registry(ready) == []


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def emit(self, sandbox_id: str, kind: str, fields: dict[str, Any]) -> None:
        self.events.append((sandbox_id, kind, fields))


def test_lifecycle_audit_and_close(ready) -> None:
    rec = Recorder()
    with Sandbox.create(SandboxSpec(), audit=rec) as sb:
        proc = sb.spawn(["true"])
        assert proc.wait() == 0
        fd, sid, cg = sb.netns_fd, sb.id, f"corral-{sb.id}"
        assert cg in list_corral_cgroups()
    kinds = [k for _, k, _ in rec.events]
    assert kinds == ["sandbox.create", "sandbox.layer", "sandbox.layer", "sandbox.layer",
                     "sandbox.layer", "exec.start", "sandbox.teardown"]
    assert set(kinds) <= set(SCHEMAS)  # the harness emits the registry's own types
    layers = [f["layer"] for _, k, f in rec.events if k == "sandbox.layer"]
    assert layers == ["workspace", "home", "limits", "network"]
    assert {s for s, _, _ in rec.events} == {sid}
    assert rec.events[-1][2] == {"ok": True, "errors": []}
    assert cg not in list_corral_cgroups()
    assert _registry(ready) == []
    with pytest.raises(OSError):
        os.fstat(fd)  # the netns descriptor is closed
