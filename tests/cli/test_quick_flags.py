"""``corral run``'s quick flags (--allow, --ro, --rw, --memory, --timeout, --idle) through a real
``corral run``, and ``corral policy resolve`` given the same flags: one composition, origins
naming the flags, one-line refusals (exit 125 for run, 2 for resolve).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root, require_tools
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.policy.errors import PolicyError
from corral.policy.quick import QuickFlags, quick_policy

pytestmark = pytest.mark.root


@pytest.fixture
def env(corral_env: dict[str, str]) -> dict[str, str]:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    return {**os.environ, **corral_env}


def corral(env: dict[str, str], *args: str,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", *args], env=env, timeout=timeout,
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)


def _registry(env: dict[str, str]) -> list[str]:
    reg = Path(env["CORRAL_HOME"]) / "sandboxes"
    return sorted(p.name for p in reg.iterdir() if p.name != ".lock") if reg.exists() else []


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[int]:
    """A real HTTP server on 127.0.0.2 serving ``tmp_path/www``."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello-from-host\n")
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.2",
                               "0", "--directory", str(www)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        yield int(server.stdout.readline().split(" port ")[1].split()[0])
    finally:
        server.kill()
        server.wait()


BAD = {
    "allow-space": ["--allow", "exa mple.com"],
    "allow-port-zero": ["--allow", "example.com:0"],
    "allow-port-huge": ["--allow", "example.com:70000"],
    "allow-port-text": ["--allow", "example.com:https"],
    "allow-empty-port": ["--allow", "example.com:"],
    "allow-cidr": ["--allow", "10.0.0.0/8"],
    "allow-star-tld": ["--allow", "*.com"],
    "allow-empty": ["--allow", ""],
    "ro-missing": ["--ro", "/nonexistent/x"],
    "rw-missing": ["--rw", "/nonexistent/x"],
    "rw-file": ["--rw", "/etc/hostname"],
    "rw-system-tree": ["--rw", "/usr/share"],
    "rw-etc": ["--rw", "/etc"],
    "memory-unit": ["--memory", "12XB"],
    "memory-zero": ["--memory", "0"],
    "memory-negative": ["--memory", "-1GiB"],
    "timeout-unit": ["--timeout", "5 days"],
    "timeout-zero": ["--timeout", "0s"],
    "idle-nan": ["--idle", "nan"],
    "idle-empty": ["--idle", ""],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_flag_is_one_line_125_and_creates_nothing(env, case: str) -> None:
    done = corral(env, "run", *BAD[case], "--", "true")
    assert done.returncode == 125, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("corral: "), done.stderr
    assert BAD[case][0] in lines[0], done.stderr  # names the flag
    assert _registry(env) == []


def test_resolve_shows_the_flags_as_a_policy(env, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("name: team\negress:\n  - host: pypi.org\n    action: inspect\n"
                      "limits:\n  wall: 10m\n  idle: 1h\n")
    rw = tmp_path / "rw"
    rw.mkdir()
    done = corral(env, "policy", "resolve", "--json", "-p", str(policy), "--allow",
                  "example.com", "--allow", "api.example.org:8443", "--ro", "/usr/share/doc",
                  "--rw", str(rw), "--memory", "1GiB", "--timeout", "2h", "--idle", "5m")
    assert done.returncode == 0, done
    data = json.loads(done.stdout)
    quick = [r for r in data["rules"] if r["policy"] == "(command line)"]
    assert [(r["host"], r["ports"], r["action"], r["origin"]) for r in quick] == [
        ("example.com", [80, 443], "inspect", "--allow example.com"),
        ("api.example.org", [8443], "inspect", "--allow api.example.org:8443")]
    assert data["limits"]["memory"] == 1024**3
    assert data["origins"]["limits.memory"] == "--memory 1GiB"
    assert data["limits"]["wall"] == 600.0  # strictest: the policy's 10m beats --timeout 2h
    assert data["origins"]["limits.wall"] == f"{policy}:6"
    assert data["limits"]["idle"] == 300.0 and data["origins"]["limits.idle"] == "--idle 5m"
    assert data["files"]["read"] == ["/usr/share/doc"]
    assert data["origins"]["files.read"] == ["--ro /usr/share/doc"]
    assert data["files"]["write"] == [str(rw)]
    assert data["origins"]["files.write"] == [f"--rw {rw}"]


def test_flag_conflicting_with_a_policy_names_both(env, tmp_path: Path) -> None:
    policy = tmp_path / "gh.yaml"
    policy.write_text("name: gh\negress:\n  - host: api.github.com\n    action: inspect\n"
                      "    credential: gh\ncredentials:\n  gh:\n    secret: store:gh\n"
                      "    header: Authorization\n    format: 'token {secret}'\n")
    for cmd in (["policy", "resolve"], ["run"]):
        done = corral(env, *cmd, "-p", str(policy), "--allow", "api.github.com",
                      *(["--", "true"] if cmd == ["run"] else []))
        assert done.returncode == (125 if cmd == ["run"] else 2), done
        assert f"{policy}:3: conflict with --allow api.github.com:" in done.stderr, done.stderr
    assert _registry(env) == []


def test_allow_lets_only_that_host_and_port_through(env, http_server: int) -> None:
    port = http_server
    script = (f"curl -s -m 5 http://127.0.0.2:{port}/index.html; "
              f"curl -s -m 5 -o /dev/null -w '%{{http_code}}\\n' http://127.0.0.2:{port + 1}/")
    done = corral(env, "run", "--allow", f"127.0.0.2:{port}", "--", "sh", "-c", script)
    assert done.returncode == 0, done
    assert done.stdout.splitlines() == ["hello-from-host", "403"], done
    without = corral(env, "run", "--", "sh", "-c", script)  # no flag: no egress at all
    assert "hello-from-host" not in without.stdout
    show = corral(env, "audit", "list", "--type", "proxy.deny", "--json")
    assert "--allow" not in show.stdout  # the deny is the default deny, not the flag's rule
    assert _registry(env) == []


def test_ro_and_rw_mounts(env, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "r.txt").write_text("read-me\n")
    (rw / "w.txt").write_text("old\n")
    os.chown(rw, 1000, 1000)
    os.chown(rw / "w.txt", 1000, 1000)
    script = (f"cat {ro}/r.txt; touch {ro}/x 2>/dev/null || echo ro-refused; "
              f"echo new >> {rw}/w.txt && mkdir {rw}/d && echo rw-ok; stat -c %u {rw}/w.txt")
    done = corral(env, "run", "--ro", str(ro), "--rw", str(rw), "--", "sh", "-c", script)
    assert done.returncode == 0, done
    out = done.stdout.splitlines()
    assert out[:3] == ["read-me", "ro-refused", "rw-ok"], done
    assert int(out[3]) >= 2_000_000_000  # the owner's files are the sandbox user's inside
    assert (rw / "w.txt").read_text() == "old\nnew\n"
    assert (rw / "d").stat().st_uid == 1000  # ... and what it makes lands as the owner's
    assert not (ro / "x").exists()
    hidden = corral(env, "run", "--", "sh", "-c", f"ls {rw} 2>&1 || echo absent")
    assert "absent" in hidden.stdout  # without the flags neither is visible


def test_timeout_and_memory_apply(env) -> None:
    done = corral(env, "run", "--timeout", "1s", "--", "sleep", "30")
    assert done.returncode == 124, done
    assert "wall-time limit of 1s" in done.stderr
    big = corral(env, "run", "--memory", "64MiB", "--", "python3", "-c",
                 "b = bytearray(512 * 1024 * 1024); print(len(b))")
    assert big.returncode == 137, big
    assert "ran out of memory (64MiB)" in big.stderr


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
       st.sampled_from(["--allow", "--memory", "--timeout", "--idle"]))
def test_any_flag_value_is_a_rule_or_one_line_refusal(value: str, flag: str) -> None:
    key = {"--allow": "allow", "--memory": "memory", "--timeout": "timeout", "--idle": "idle"}
    flags = QuickFlags(**{key[flag]: (value,) if flag == "--allow" else value})
    try:
        policy = quick_policy(flags)
    except PolicyError as err:
        assert len(err.problems) == 1 and "\n" not in err.problems[0]
        assert err.problems[0].startswith(f"{flag} ")
        return
    if flag == "--allow":
        (rule,) = policy.rules
        assert rule.action == "inspect" and str(rule.origin) == f"--allow {value}"
        assert rule.ports and all(1 <= p <= 65535 for p in rule.ports)
    else:
        ((setting, origin),) = policy.settings.values()
        assert setting is None or setting > 0
        assert str(origin) == f"{flag} {value}"
