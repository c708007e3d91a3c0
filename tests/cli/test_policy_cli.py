"""`corral policy ...` through the installed entry point: exit codes, messages, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

CORRAL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "corral")
GOOD = "name: team\negress:\n  - host: '*.example.test'\n    action: direct\n"
BAD = "name: team\negress:\n  - host: '*.com'\n    action: direct\nlimits: {memory: 4GB}\n"
OTHER = "name: other\negress:\n  - host: api.example.test\n    action: inspect\n"


def corral(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([CORRAL, *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env})
    assert "Traceback" not in out.stderr + out.stdout
    return out


@pytest.fixture
def files(tmp_path: Path, corral_env: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, text in (("good", GOOD), ("bad", BAD), ("other", OTHER)):
        (tmp_path / f"{name}.yaml").write_text(text)
        out[name] = str(tmp_path / f"{name}.yaml")
    return out


def test_check(files: dict[str, str], corral_env: dict[str, str]) -> None:
    ok = corral("policy", "check", files["good"], "builtin:github", env=corral_env)
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = corral("policy", "check", files["good"], files["bad"], env=corral_env)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert lines[0].startswith(f"corral: {files['bad']}:3: egress[0].host: ")
    assert lines[1].startswith(f"corral: {files['bad']}:5: limits.memory: ")


def test_resolve_json_and_conflicts(files: dict[str, str], corral_env: dict[str, str]) -> None:
    out = corral("policy", "resolve", "-p", "builtin:pypi", "-p", files["good"], "--json",
                 env=corral_env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["names"] == ["pypi", "team"]
    assert data["rules"][-1]["origin"] == f"{files['good']}:3"
    assert data["origins"]["limits.memory"] == "default" and len(data["digest"]) == 64
    human = corral("policy", "resolve", "-p", files["good"], env=corral_env)
    assert f"{files['good']}:3" in human.stdout
    clash = corral("policy", "resolve", "-p", files["good"], "-p", files["other"],
                   env=corral_env)
    assert clash.returncode == 2
    assert f"{files['good']}:3" in clash.stderr and f"{files['other']}:3" in clash.stderr


def test_explain_and_list(files: dict[str, str], corral_env: dict[str, str]) -> None:
    out = corral("policy", "explain", "-p", files["good"], "https://cdn.example.test/x",
                 env=corral_env)
    assert out.returncode == 0 and "direct" in out.stdout and f"{files['good']}:3" in out.stdout
    out = corral("policy", "explain", "-p", files["good"], "http://example.test/", "--method",
                 "POST", env=corral_env)
    assert "default deny" in out.stdout
    bad = corral("policy", "explain", "-p", files["bad"], "https://x.test/", env=corral_env)
    assert bad.returncode == 2 and f"{files['bad']}:3" in bad.stderr
    url = corral("policy", "explain", "not a url", env=corral_env)
    assert url.returncode == 2 and "corral:" in url.stderr
    listed = corral("policy", "list", env=corral_env)
    assert listed.returncode == 0
    for name in ("anthropic", "openai", "github", "pypi", "npm", "debian"):
        assert f"builtin:{name}" in listed.stdout
