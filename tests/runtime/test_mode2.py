"""``corral.runtime.run_agent`` (Mode 2 assembled) owns the proxy child it is handed.

Real parts: a real ``ProxyProcess`` (forked by the pre-started helper or directly), real
policies, the real audit store and a real sandbox. The child must be gone after a run whose
policy has no egress rules, and after a run the audit store refused (nothing is created then,
and ``finish`` never sees an audit that was never opened).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require_root, require_tools

from corral.errors import CorralError
from corral.policy import resolve
from corral.runtime import ProxyProcess, run_agent
from corral.sandbox import SandboxSpec

pytestmark = pytest.mark.root


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def _spec(rp: Any) -> SandboxSpec:
    return SandboxSpec(policies=tuple(rp.names), limits=rp.limits, files=rp.files)


def _policy(tmp_path: Path, egress: bool) -> Any:
    path = tmp_path / "p.yaml"
    path.write_text("name: m\n" + ("egress:\n  - host: 127.0.0.2\n    ports: [9]\n"
                                    "    action: direct\n    allow_private: true\n"
                                    if egress else "limits:\n  memory: 256MiB\n"))
    return resolve([str(path)])


def test_no_egress_rules_stops_the_child(corral_env: dict[str, str], tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip")
    rp = _policy(tmp_path, egress=False)
    assert not rp.rules
    proxy = ProxyProcess()
    finished: list[Any] = []
    code = run_agent(_spec(rp), ["true"], policy=rp, proxy=proxy, upstream_proxy=None,
                     finish=finished.append)
    assert code == 0 and len(finished) == 1
    assert proxy.pid > 0 and _gone(proxy.pid), "the unused proxy child is still running"


def test_refused_store_stops_the_child(corral_env: dict[str, str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip")
    rp = _policy(tmp_path, egress=True)
    assert rp.rules
    proxy = ProxyProcess()
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    monkeypatch.setenv("CORRAL_HOME", str(blocked))  # the audit store cannot be opened
    finished: list[Any] = []
    with pytest.raises((CorralError, OSError)):
        run_agent(_spec(rp), ["true"], policy=rp, proxy=proxy, upstream_proxy=None,
                  finish=finished.append)
    assert not finished
    assert proxy.pid > 0 and _gone(proxy.pid), "the proxy child outlived a refused store"
