"""Cgroup limits against the real kernel (v1 here; v2 membership/kill on the unified mount when
one is present), plus v2 file selection on a scratch directory tree.

Every probe is bounded so that, without the limit, it ends by itself (a memory bomb stops at
256 MiB, a fork bomb at 100 children): a missing limit fails the test instead of hurting the
machine. Every group is destroyed by a finalizer, which also kills what is left in it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import require, require_root

from corral.errors import CorralError
from corral.policy.types import Limits
from corral.sandbox.cgroups import (
    Cgroup,
    CgroupLayout,
    cgroup_version,
    detect_layout,
    list_corral_cgroups,
)

pytestmark = pytest.mark.root

NO_LIMITS = Limits(memory=None, pids=None, cpu=None)
_counter = itertools.count()
MakeGroup = Callable[..., Cgroup]


def _require() -> None:
    require_root()
    require(os.path.exists("/proc/self/cgroup"), "cgroups")


@pytest.fixture(scope="module", autouse=True)
def _remove_empty_parents() -> Iterator[None]:
    yield
    if os.geteuid() != 0:
        return
    layout = detect_layout()
    roots = [*layout.v1.values(), *([layout.v2] if layout.v2 else [])]
    mount = _unified_mount()
    for root in [*roots, *([mount] if mount else [])]:
        with contextlib.suppress(OSError):  # still used by live sandboxes: leave it
            (root / "corral").rmdir()


@pytest.fixture
def make_group() -> Iterator[MakeGroup]:
    made: list[Cgroup] = []

    def make(limits: Limits, layout: CgroupLayout | None = None) -> Cgroup:
        cg = Cgroup.create(f"test-{os.getpid()}-{next(_counter)}", limits, layout)
        made.append(cg)
        return cg

    yield make
    for cg in made:
        cg.destroy()
        assert not any(d.exists() for d in cg.dirs.values())


def _run_in(cg: Cgroup, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], preexec_fn=cg.attach_self,
                          capture_output=True, text=True, timeout=timeout)


MEMORY_BOMB = (
    "chunks = []\n"
    "for _ in range(256):\n"
    "    chunks.append(bytearray(1 << 20))\n"  # zero-filled: every page is touched
    "print('survived')\n"
)


def test_memory_bomb_killed_by_oom_and_reported(make_group: MakeGroup) -> None:
    _require()
    cg = make_group(Limits(memory=64 * 1024**2, pids=32, cpu=None))
    assert not cg.oom_killed()
    out = _run_in(cg, MEMORY_BOMB)
    assert out.returncode == -9, (out.returncode, out.stdout, out.stderr)
    assert "survived" not in out.stdout
    assert cg.oom_killed()


def test_memory_under_limit_runs(make_group: MakeGroup) -> None:
    """Positive control: the same probe fits in a group with room for it."""
    _require()
    cg = make_group(Limits(memory=512 * 1024**2, pids=32, cpu=None))
    out = _run_in(cg, MEMORY_BOMB)
    assert out.stdout.strip() == "survived", out.stderr
    assert not cg.oom_killed()


FORK_BOMB = (
    "import os, time\n"
    "n = 0\n"
    "for _ in range(100):\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError:\n"
    "        break\n"
    "    if pid == 0:\n"
    "        os.close(1); os.close(2); time.sleep(60); os._exit(0)\n"
    "    n += 1\n"
    "print(n, flush=True)\n"
)


def test_fork_bomb_stopped_at_pids_max(make_group: MakeGroup) -> None:
    _require()
    cg = make_group(Limits(memory=None, pids=32, cpu=None))
    out = _run_in(cg, FORK_BOMB)
    assert out.returncode == 0, out.stderr
    assert 0 < int(out.stdout) < 32
    assert cg.pids_exhausted()
    assert len(cg.pids()) == int(out.stdout)  # the sleeping children are still in the group
    cg.kill_all()
    assert cg.pids() == []


def test_fork_bomb_control_without_pids_limit(make_group: MakeGroup) -> None:
    _require()
    cg = make_group(NO_LIMITS)
    out = _run_in(cg, FORK_BOMB.replace("range(100)", "range(40)"))
    assert int(out.stdout) == 40
    assert not cg.pids_exhausted()
    cg.kill_all()


BUSY = "import time\nend = time.monotonic() + 0.6\nwhile time.monotonic() < end: pass\n"


def test_cpu_throttled(make_group: MakeGroup) -> None:
    _require()
    cg = make_group(Limits(memory=None, pids=None, cpu=0.2))
    _run_in(cg, BUSY)
    used = cg.cpu_usage_ns() / 1e9
    assert 0.01 < used < 0.35, used  # unthrottled this is ~0.6 s


def test_kill_all_reaches_escaped_daemons(make_group: MakeGroup) -> None:
    """A double-forked daemon has left its parent, not its cgroup."""
    _require()
    cg = make_group(NO_LIMITS)
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.close(1); os.close(2); time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.1)\n"
    )
    _run_in(cg, code)
    alive = cg.pids()
    assert len(alive) == 1
    cg.kill_all()
    assert cg.pids() == []
    # gone, or a zombie waiting for its new parent (init) to reap it
    try:
        state = Path(f"/proc/{alive[0]}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z", "X")


def test_attach_and_destroy_idempotent(make_group: MakeGroup) -> None:
    _require()
    cg = make_group(Limits(memory=256 * 1024**2, pids=64, cpu=1.0))
    proc = subprocess.Popen(["sleep", "60"])
    try:
        cg.attach(proc.pid)
        assert cg.pids() == [proc.pid]
        for d in cg.dirs.values():
            assert str(proc.pid) in (d / "cgroup.procs").read_text().split()
    finally:
        cg.destroy()
        proc.wait(timeout=10)
    assert proc.returncode == -9
    cg.destroy()
    assert cg.name not in list_corral_cgroups()


def test_name_collision_leaves_existing_group_alone(make_group: MakeGroup) -> None:
    _require()
    cg = make_group(NO_LIMITS)
    proc = subprocess.Popen(["sleep", "60"], preexec_fn=cg.attach_self)
    try:
        with pytest.raises(CorralError, match="already exists"):
            Cgroup.create(cg.name, NO_LIMITS)
        assert cg.pids() == [proc.pid]
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_gc_removes_only_dead(make_group: MakeGroup) -> None:
    _require()
    live, dead = make_group(NO_LIMITS), make_group(NO_LIMITS)
    removed = Cgroup.gc({live.name} | {n for n in list_corral_cgroups()
                                       if not n.startswith("test-")})
    assert dead.name in removed and live.name not in removed
    assert live.name in list_corral_cgroups()
    assert dead.name not in list_corral_cgroups()


def test_version_detected() -> None:
    _require()
    layout = detect_layout()
    assert cgroup_version() == layout.version
    if layout.version == 1:
        assert {"memory", "pids", "cpu"} <= set(layout.v1)


def _unified_mount() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def test_v2_membership_and_cgroup_kill(make_group: MakeGroup) -> None:
    """On the real unified hierarchy: create, attach, list, cgroup.kill, remove."""
    _require()
    mount = _unified_mount()
    require(mount is not None, "a cgroup2 mount")
    assert mount is not None
    cg = make_group(NO_LIMITS, CgroupLayout(2, v2=mount))
    proc = subprocess.Popen(["sleep", "60"], preexec_fn=cg.attach_self)
    try:
        assert cg.pids() == [proc.pid]
        assert (cg.dirs["unified"] / "cgroup.kill").exists()
        cg.kill_all()
        assert proc.wait(timeout=10) == -9
        assert cg.pids() == []
    finally:
        proc.kill()
        proc.wait()


def test_v2_files_selected(tmp_path: Path) -> None:
    """v2 limits land in memory.max / memory.swap.max / pids.max / cpu.max, controllers are
    enabled down the tree (checked on a scratch tree: this machine's controllers are on v1)."""
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    layout = CgroupLayout(2, v2=root)
    group_dir = root / "corral" / "sb1"
    orig_mkdir = Path.mkdir

    def mkdir(self: Path, *a: object, **kw: object) -> None:
        orig_mkdir(self, *a, **kw)  # type: ignore[arg-type]
        if self == group_dir:  # what the kernel would populate
            (self / "memory.swap.max").write_text("max\n")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "mkdir", mkdir)
        cg = Cgroup.create("sb1", Limits(memory=64 * 1024**2, pids=32, cpu=1.5), layout)
    assert cg.dirs == {"unified": group_dir}
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (root / "corral" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (group_dir / "memory.max").read_text() == str(64 * 1024**2)
    assert (group_dir / "memory.swap.max").read_text() == "0"
    assert (group_dir / "pids.max").read_text() == "32"
    assert (group_dir / "cpu.max").read_text() == "150000 100000"
    (group_dir / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (group_dir / "pids.events").write_text("max 2\n")
    (group_dir / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    assert cg.oom_killed() and cg.pids_exhausted()
    assert cg.cpu_usage_ns() == 1_500_000


def test_v2_missing_controller_fails_closed(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu pids\n")
    with pytest.raises(CorralError, match="memory"):
        Cgroup.create("sb1", Limits(memory=1024**3), CgroupLayout(2, v2=root))
    assert not (root / "corral" / "sb1").exists()


@pytest.mark.parametrize(
    ("mountinfo", "version"),
    [
        ("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", 2),
        ("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
         "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n", 1),
    ],
)
def test_detect_layout(tmp_path: Path, mountinfo: str, version: int,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(mountinfo)
    real_read = Path.read_text

    def read_text(self: Path, *a: object, **kw: object) -> str:
        if self.name == "cgroup.controllers":  # the pure-v2 root has memory; unified doesn't
            return "memory pids cpu" if str(self.parent) == "/sys/fs/cgroup" else "hugetlb"
        return real_read(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    assert detect_layout(str(info)).version == version


def test_bad_name_refused() -> None:
    for name in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(CorralError):
            Cgroup.open(name, CgroupLayout(2, v2=Path("/nonexistent")))


def test_nothing_left_behind() -> None:
    """Runs last in this module: no test group survives."""
    _require()
    time.sleep(0)
    assert [n for n in list_corral_cgroups() if n.startswith(f"test-{os.getpid()}-")] == []
