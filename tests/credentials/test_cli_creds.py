"""``corral creds`` end to end through the real CLI entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _corral(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        input=stdin, capture_output=True, text=True, env={**os.environ, **env},
    )


def test_set_list_rm(corral_env: dict[str, str]) -> None:
    config = Path(corral_env["CORRAL_CONFIG"])
    (config / "gh.yaml").write_text(
        "name: gh\negress:\n  - {host: api.github.com, action: inspect, credential: gh}\n"
        "credentials:\n  gh: {secret: store:gh-token, env: GH_TOKEN}\n"
    )
    done = _corral(corral_env, "creds", "set", "gh-token", stdin="very-secret\n")
    assert done.returncode == 0, done.stderr
    listed = _corral(corral_env, "creds", "list")
    assert listed.returncode == 0, listed.stderr
    assert "gh-token\tstored" in listed.stdout and "gh.yaml:5 (gh)" in listed.stdout
    assert "very-secret" not in listed.stdout + listed.stderr
    stored = Path(corral_env["CORRAL_HOME"]) / "credentials" / "gh-token"
    assert stored.read_text() == "very-secret"
    assert _corral(corral_env, "creds", "rm", "gh-token").returncode == 0
    gone = _corral(corral_env, "creds", "rm", "gh-token")
    assert gone.returncode == 2 and "no stored secret" in gone.stderr
    bad = _corral(corral_env, "creds", "set", "../x", stdin="v")
    assert bad.returncode == 2 and "invalid credential name" in bad.stderr
