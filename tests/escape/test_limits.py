"""Limits, end to end through ``corral run``: memory, pids, /tmp size, wall and idle time.

Each breach ends with the DESIGN exit code and one ``corral:`` line; each has a control run
under a looser limit where the same workload completes, so the limit (not the workload) is
what stopped it. The cgroup internals are tested in tests/sandbox/test_cgroups.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from escape.conftest import run_in

pytestmark = pytest.mark.root


def _policy(tmp_path: Path, **limits: object) -> str:
    body = ", ".join(f"{k}: {v}" for k, v in limits.items())
    path = tmp_path / f"limits-{abs(hash(body))}.yaml"
    path.write_text(f"name: limits-test\nlimits: {{{body}}}\n")
    return str(path)


MEMORY_HOG = ("import sys\nchunks = []\nfor _ in range(int(sys.argv[1])):\n"
              "    chunks.append(bytearray(8 << 20))\nprint('allocated', len(chunks) * 8, 'MiB')\n")


def test_memory_bomb_is_killed_137(corral, tmp_path: Path) -> None:
    tight = _policy(tmp_path, memory="64MiB")
    done = corral("-p", tight, "--", "/usr/bin/python3", "-c", MEMORY_HOG, "64")  # 512 MiB
    assert done.returncode == 137, done
    assert "out of memory (64MiB)" in done.err
    loose = _policy(tmp_path, memory="256MiB")
    ok = corral("-p", loose, "--", "/usr/bin/python3", "-c", MEMORY_HOG, "6")  # 48 MiB
    assert ok.returncode == 0, ok
    assert ok.out.strip() == "allocated 48 MiB"


FORKER = ("import os, sys, time\nn = 0\nfor _ in range(int(sys.argv[1])):\n"
          "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
          "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\n"
          "print('forked', n)\n")


def test_pids_limit_contains_forks(corral, tmp_path: Path) -> None:
    done = corral("-p", _policy(tmp_path, pids=32), "--", "/usr/bin/python3", "-c", FORKER, "100")
    forked = int(done.out.split()[-1])
    assert 0 < forked < 32, done
    assert "process limit (32 pids)" in done.err
    control = corral("-p", _policy(tmp_path, pids=256), "--", "/usr/bin/python3", "-c", FORKER,
                     "100")
    assert control.out.strip() == "forked 100"


def test_fork_bomb_is_contained_and_torn_down(corral, tmp_path: Path) -> None:
    started = time.monotonic()
    bomb = "id -u; b(){ b | b & }; b; sleep 10"
    done = corral("-p", _policy(tmp_path, pids=64, wall="2s"), "--", "bash", "-c", bomb)
    assert done.returncode == 124
    assert time.monotonic() - started < 20
    from escape.test_process import _sandbox_uid_processes

    assert _sandbox_uid_processes(int(done.out.split()[0])) == []


def test_wall_timeout_124(corral, tmp_path: Path) -> None:
    started = time.monotonic()
    done = corral("-p", _policy(tmp_path, wall="1s"), "--", "sleep", "30")
    assert done.returncode == 124
    assert "wall-time limit of 1s" in done.err
    assert time.monotonic() - started < 10
    assert corral("-p", _policy(tmp_path, wall="5s"), "--", "sleep", "0.2").returncode == 0


def test_idle_timeout_124(corral, tmp_path: Path) -> None:
    policy = _policy(tmp_path, idle="1s")
    started = time.monotonic()
    done = corral("-p", policy, "--", "sleep", "30")
    assert done.returncode == 124
    assert "no output and no CPU use for 1s" in done.err
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "busy",
    [
        "for i in 1 2 3 4 5 6 7 8; do echo tick; sleep 0.3; done",  # output keeps it alive
        "end=$(( $(date +%s) + 3 )); while [ $(date +%s) -lt $end ]; do :; done",  # so does CPU
    ],
    ids=["output", "cpu"],
)
def test_activity_is_not_idle(corral, tmp_path: Path, busy: str) -> None:
    done = corral("-p", _policy(tmp_path, idle="1s"), "--", "sh", "-c", busy)
    assert done.returncode == 0, done


def test_tmp_fill_hits_its_own_limit(sandbox) -> None:
    sb = sandbox(tmp_size=8 << 20)
    fill = run_in(sb, ["dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=64"])
    assert fill.returncode != 0
    assert "No space left on device" in fill.err
    sb2 = sandbox(tmp_size=8 << 20)
    assert run_in(sb2, ["dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=4"]).returncode == 0
