"""``corral sandbox list/exec/kill`` against a real live ``corral run``: the second command gets
the same uid, namespaces, seccomp, Landlock and cgroup; kill ends the run with full teardown;
both are in the sandbox's trail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root, require_tools

pytestmark = pytest.mark.root


@pytest.fixture
def env(corral_env: dict[str, str]) -> dict[str, str]:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "nsenter")
    return {**os.environ, **corral_env}


def corral(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", *args], env=env, timeout=60,
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)


@pytest.fixture
def live(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict]]:
    ws = tmp_path / "ws"
    ws.mkdir()
    run = subprocess.Popen([sys.executable, "-m", "corral", "run", "--workspace", str(ws), "--",
                            "sleep", "120"], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            rows = json.loads(corral(env, "sandbox", "list", "--json").stdout or "[]")
            if rows and rows[0]["command"]:
                break
            time.sleep(0.05)
        assert rows and rows[0]["command"] == ["sleep", "120"], rows
        yield run, rows[0]
    finally:
        run.kill()
        run.wait()
        corral(env, "sandbox", "gc")


def _events(env: dict[str, str], sid: str) -> list[dict]:
    out = corral(env, "audit", "list", "--sandbox", sid, "--json").stdout
    return sorted((json.loads(line) for line in out.splitlines()), key=lambda e: e["seq"])


def test_list_shows_command_and_workspace(env, live, tmp_path: Path) -> None:
    _, row = live
    assert row["workspace"] == str(tmp_path / "ws") and row["state"] == "running"
    table = corral(env, "sandbox", "list").stdout
    assert "sleep 120" in table and row["id"] in table


def test_exec_runs_with_the_same_layers(env, live, tmp_path: Path) -> None:
    _, row = live
    script = ("id -u; pwd; ps -eo comm | grep -c '^sleep$'; "
              "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status | tr -d '\\t'; "
              "echo hi > /workspace/from-exec && echo ws-ok; touch /etc/x 2>/dev/null || "
              "echo etc-refused; ls /root 2>/dev/null || echo no-root; "
              "cat /etc/shadow 2>/dev/null | head -c1 | wc -c; sleep 1.5 & "
              "echo $! > /dev/null; wait")
    proc = subprocess.Popen([sys.executable, "-m", "corral", "sandbox", "exec", row["id"], "--",
                             "sh", "-c", script], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    from corral.sandbox.cgroups import Cgroup

    in_group = [Path(f"/proc/{p}/comm").read_text().strip()
                for p in Cgroup.open(f"corral-{row['id']}").pids()
                if Path(f"/proc/{p}/comm").exists()]
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (out, err)
    assert out.splitlines() == [str(row["uid"]), "/workspace", "1", "CapEff:0000000000000000",
                                "NoNewPrivs:1", "Seccomp:2", "ws-ok",
                                "etc-refused", "no-root", "0"], (out, err)
    assert in_group.count("sleep") == 2  # the run's and the exec's: one cgroup
    assert (tmp_path / "ws" / "from-exec").read_text() == "hi\n"
    starts = [e for e in _events(env, row["id"]) if e["type"] == "exec.start"]
    assert [s["data"].get("via") for s in starts] == ["run", "sandbox exec"]
    assert starts[1]["data"]["argv"][:2] == ["sh", "-c"]


def test_exec_exit_status_and_refusals(env, live) -> None:
    _, row = live
    assert corral(env, "sandbox", "exec", row["id"], "--", "sh", "-c", "exit 7").returncode == 7
    gone = corral(env, "sandbox", "exec", "deadbeef", "--", "true")
    assert gone.returncode != 0 and "no live sandbox deadbeef" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_kill_ends_the_run_with_teardown(env, live) -> None:
    run, row = live
    done = corral(env, "sandbox", "kill", row["id"])
    assert done.returncode == 0, done
    assert f"sandbox {row['id']} ended" in done.stdout
    run.wait(timeout=30)
    assert run.returncode != 0
    assert json.loads(corral(env, "sandbox", "list", "--json").stdout) == []
    types = [e["type"] for e in _events(env, row["id"])]
    assert "sandbox.kill" in types
    assert types.index("sandbox.kill") < types.index("sandbox.exit") < types.index(
        "sandbox.teardown")
    assert not Path(f"/sys/fs/cgroup/pids/corral/corral-{row['id']}").exists()
