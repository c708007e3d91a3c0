"""A store that fails mid-run stops the sandbox's egress, and corral says why.

The state dir is a small tmpfs the test mounts (unmounted in the finalizer); once the command
has made one request, the test fills the tmpfs: the next proxy event cannot be committed, so
the request is dropped (no response reaches the agent) and the launcher reports the failure.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root, require_tools

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    require_root()
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,mode=0700", "tmpfs", str(state)],
                   check=True)
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello\n")
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind",
                             "127.0.0.2"], cwd=www, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline().split(" port ")[1].split()[0])
    finally:
        proc.kill()
        proc.wait()


def test_store_failing_mid_run_stops_egress(corral_env: dict[str, str], small_state: Path,
                                            server: int, tmp_path: Path) -> None:
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    policy = tmp_path / "p.yaml"
    policy.write_text(f"name: e\negress:\n  - host: 127.0.0.2\n    ports: [{server}]\n"
                      "    action: direct\n    allow_private: true\n")
    url = f"http://127.0.0.2:{server}/index.html"
    script = (f"curl -s -m 5 -o /dev/null -w '%{{http_code}}\\n' {url}; read go; "
              f"curl -s -m 5 -o /dev/null -w '%{{http_code}}\\n' {url}; true")
    # The start-time floor of free space (CORRAL_MIN_FREE) is off: this test is about the
    # store failing after the sandbox started, which the floor cannot prevent.
    env = {**os.environ, **corral_env, "CORRAL_HOME": str(small_state), "CORRAL_MIN_FREE": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "corral", "run", "-p", str(policy), "--",
                             "sh", "-c", script], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "200\n"  # egress works while the store does
        with contextlib.suppress(OSError), open(small_state / "fill", "wb") as fill:
            while True:
                fill.write(b"\0" * 65536)
                fill.flush()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            (small_state / "fill").unlink()
    assert out.strip() == "000", out  # dropped: no response without its audit record
    assert "the audit store failed during the run" in err and "disk is full" in err, err
    assert "egress was stopped" in err
