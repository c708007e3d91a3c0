"""The idle limit as a user at a terminal meets it: ``corral run`` under a real pty.

A terminal run is idle only after no input, no output and no CPU use for the whole period, and
has no idle limit unless one is set; a run without a terminal keeps the default (30m).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_root, require_tools

pytestmark = pytest.mark.root


@pytest.fixture
def env(corral_env: dict[str, str]) -> dict[str, str]:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    return {**os.environ, **corral_env}


class Terminal:
    """``corral run`` with a real pty as its stdin, stdout and stderr."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "corral", "run", *args], env=env,
                                     stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.output = b""

    def read(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if not select.select([self.master], [], [], left)[0]:
                return
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def wait(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.read(0.2)
        self.read(0.5)
        code = self.proc.wait(timeout=5)
        os.close(self.master)
        return code


def _limits(env: dict[str, str]) -> list[dict[str, object]]:
    done = subprocess.run([sys.executable, "-m", "corral", "audit", "list", "--type",
                           "sandbox.layer", "--json"], env=env, capture_output=True, text=True,
                          check=True)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    return [e["data"] for e in sorted(events, key=lambda e: e["ts_us"])
            if e["data"].get("layer") == "limits"]


def test_output_resets_the_idle_timer(env) -> None:
    term = Terminal(env, "--idle", "2s", "--", "sh", "-c",
                    "for i in 1 2 3 4 5; do sleep 1; echo tick$i; done")
    assert term.wait() == 0, term.output  # 5 s > 2 s, but never 2 s without output
    assert b"tick5" in term.output


def test_input_resets_the_idle_timer(env) -> None:
    # no echo, and nothing reads the keystrokes (which would use CPU): typing is the only activity
    term = Terminal(env, "--idle", "2s", "--", "sh", "-c",
                    "stty -echo; sleep 6; echo survived")
    for _ in range(6):
        term.read(1.0)
        os.write(term.master, b"x")
    assert term.wait() == 0, term.output
    assert b"survived" in term.output


def test_silence_at_a_terminal_ends_the_run_when_idle_is_set(env) -> None:
    term = Terminal(env, "--idle", "2s", "--", "sh", "-c", "stty -echo; read x")
    start = time.monotonic()
    assert term.wait() == 124, term.output
    assert 2 <= time.monotonic() - start < 20
    assert b"no input, output or CPU use for 2s" in term.output


def test_a_terminal_run_has_no_idle_limit_unless_set(env, tmp_path: Path) -> None:
    assert Terminal(env, "--", "true").wait() == 0
    assert _limits(env)[-1].get("idle") is None  # at a terminal: none
    piped = subprocess.run([sys.executable, "-m", "corral", "run", "--", "true"], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, check=False)
    assert piped.returncode == 0
    assert _limits(env)[-1]["idle"] == 1800.0  # without one: the default
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nlimits:\n  idle: 10m\n")
    assert Terminal(env, "-p", str(policy), "--", "true").wait() == 0
    assert _limits(env)[-1]["idle"] == 600.0  # a policy's explicit limit holds at a terminal
    assert Terminal(env, "--idle", "1h", "--", "true").wait() == 0
    assert _limits(env)[-1]["idle"] == 3600.0
