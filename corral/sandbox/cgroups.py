"""Per-sandbox cgroups: memory (swap off), pids and cpu throttling, on cgroup v1 and v2.

Layout: ``<hierarchy>/corral/<name>`` — one directory per controller hierarchy on v1 (memory,
pids, cpu, cpuacct, freezer; cpu and cpuacct may share a mount), one directory on v2.

Invariants:
- A limit that was asked for is set or ``create`` fails (and removes what it made): a sandbox
  never runs with a limit silently missing. Swap is disabled where the kernel can account it
  (``memory.memsw.limit_in_bytes`` = the memory limit on v1, ``memory.swap.max`` = 0 on v2).
- Memory exhaustion is handled by the kernel OOM killer inside the group (v1 ``oom_kill_disable``
  stays 0), and is visible afterwards through ``oom_killed()``; a fork bomb meets ``pids.max``
  and shows in ``pids_exhausted()``.
- ``attach_self`` only does ``os.open``/``os.write``/``os.close`` on paths computed beforehand,
  so it is safe in a ``subprocess`` ``preexec_fn`` (after fork, before exec).
- ``kill_all`` leaves the group empty (v2 ``cgroup.kill``; v1 freeze, SIGKILL, thaw, repeat);
  ``destroy`` kills and removes and may be called any number of times.
"""

# No ``from __future__ import annotations``: a NamedTuple would compile a ForwardRef per field,
# on every launch (docs/benchmarks.md, "Launch-path choices").

import contextlib
import os
import re
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from corral.errors import CorralError
from corral.policy.settings import Limits

__all__ = ["PARENT", "Cgroup", "CgroupLayout", "cgroup_version", "detect_layout",
           "list_corral_cgroups"]

PARENT = "corral"
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CFS_PERIOD_US = 100_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class CgroupLayout(NamedTuple):
    """Where the hierarchies are: ``v1`` maps controller -> mount point; ``v2`` is the root."""

    version: int
    v1: Mapping[str, Path] = MappingProxyType({})
    v2: Path | None = None


def detect_layout(mountinfo: str = "/proc/self/mountinfo") -> CgroupLayout:
    """v2 when the memory controller lives in the unified hierarchy, else v1."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, superopts = [*right.split(), "", ""][:3]
            mountpoint = Path(left.split()[4].replace("\\040", " "))
            if fstype == "cgroup2" and v2 is None:
                v2 = mountpoint
            elif fstype == "cgroup":
                for opt in superopts.split(","):
                    if opt in V1_CONTROLLERS and opt not in v1:
                        v1[opt] = mountpoint
    if v2 is not None and "memory" in _read(v2 / "cgroup.controllers", "").split():
        return CgroupLayout(2, v2=v2)
    if "memory" in v1:
        return CgroupLayout(1, v1=v1)
    raise CorralError("no cgroup hierarchy with the memory controller is mounted")


def cgroup_version() -> int:
    return detect_layout().version


def _read(path: Path, default: str | None = None) -> str:
    try:
        return path.read_text()
    except OSError:
        if default is None:
            raise
        return default


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise CorralError(f"cgroup: cannot write {value!r} to {path}: {exc.strerror}") from None


def _counter(path: Path, key: str) -> int:
    for line in _read(path, "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


class Cgroup:
    """One sandbox's group (``dirs``: controller, or "unified", -> this group's directory)."""

    def __init__(self, name: str, layout: CgroupLayout, dirs: dict[str, Path]) -> None:
        self.name, self.layout, self.dirs = name, layout, dirs
        self._procs_files = tuple(
            os.fsencode(d / "cgroup.procs") for d in dict.fromkeys(self.dirs.values())
        )

    def __repr__(self) -> str:
        return f"Cgroup(name={self.name!r}, layout={self.layout!r}, dirs={self.dirs!r})"

    # -- construction -------------------------------------------------------------------

    @classmethod
    def open(cls, name: str, layout: CgroupLayout | None = None) -> "Cgroup":
        """A handle on ``corral/<name>`` (which may or may not exist)."""
        if not _NAME.fullmatch(name):
            raise CorralError(f"invalid cgroup name {name!r}")
        layout = layout or detect_layout()
        if layout.version == 2:
            assert layout.v2 is not None
            return cls(name, layout, {"unified": layout.v2 / PARENT / name})
        return cls(name, layout, {c: m / PARENT / name for c, m in layout.v1.items()})

    @classmethod
    def create(cls, name: str, limits: Limits, layout: CgroupLayout | None = None) -> "Cgroup":
        cg = cls.open(name, layout)
        created: list[Path] = []
        try:
            if cg.layout.version == 2:
                cg._create_v2(limits, created)
            else:
                cg._create_v1(limits, created)
        except BaseException:
            # Only what this call made, and nothing is attached yet: no kill, and a name that
            # collides with an existing (maybe live) group never touches that group.
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        return cg

    def _create_v1(self, limits: Limits, created: list[Path]) -> None:
        needed = {"memory": limits.memory, "pids": limits.pids, "cpu": limits.cpu}
        for controller, value in needed.items():
            if value is not None and controller not in self.dirs:
                raise CorralError(f"cgroup v1 controller {controller!r} is not mounted")
        for d in dict.fromkeys(self.dirs.values()):
            _mkdir(d, created)
        if limits.memory is not None:
            mem = self.dirs["memory"]
            _write(mem / "memory.limit_in_bytes", str(limits.memory))
            if (mem / "memory.memsw.limit_in_bytes").exists():
                _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory))
            _write(mem / "memory.swappiness", "0")
        if limits.pids is not None:
            _write(self.dirs["pids"] / "pids.max", str(limits.pids))
        if limits.cpu is not None:
            cpu = self.dirs["cpu"]
            _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(max(1000, round(limits.cpu * CFS_PERIOD_US))))

    def _create_v2(self, limits: Limits, created: list[Path]) -> None:
        root = self.layout.v2
        assert root is not None
        group = self.dirs["unified"]
        wanted = [c for c, v in (("memory", limits.memory), ("pids", limits.pids),
                                 ("cpu", limits.cpu)) if v is not None]
        available = _read(root / "cgroup.controllers", "").split()
        missing = [c for c in wanted if c not in available]
        if missing:
            raise CorralError(f"cgroup v2 controllers not available: {', '.join(missing)}")
        enable = " ".join(f"+{c}" for c in V2_CONTROLLERS if c in available)
        group.parent.mkdir(exist_ok=True)
        for d in (root, group.parent):
            if enable and set(wanted) - set(_read(d / "cgroup.subtree_control", "").split()):
                _write(d / "cgroup.subtree_control", enable)
        _mkdir(group, created)
        if limits.memory is not None:
            _write(group / "memory.max", str(limits.memory))
            if (group / "memory.swap.max").exists():
                _write(group / "memory.swap.max", "0")
        if limits.pids is not None:
            _write(group / "pids.max", str(limits.pids))
        if limits.cpu is not None:
            quota = max(1000, round(limits.cpu * CFS_PERIOD_US))
            _write(group / "cpu.max", f"{quota} {CFS_PERIOD_US}")

    # -- membership ---------------------------------------------------------------------

    def attach_self(self) -> None:
        """Move the calling process into the group (fork-safe: usable as preexec_fn)."""
        for path in self._procs_files:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def attach(self, pid: int) -> None:
        for path in self._procs_files:
            _write(Path(os.fsdecode(path)), str(pid))

    def pids(self) -> list[int]:
        pids: set[int] = set()
        for path in self._procs_files:
            pids.update(int(p) for p in _read(Path(os.fsdecode(path)), "").split())
        return sorted(pids)

    # -- accounting ---------------------------------------------------------------------

    def oom_killed(self) -> bool:
        if self.layout.version == 2:
            return _counter(self.dirs["unified"] / "memory.events", "oom_kill") > 0
        return _counter(self.dirs["memory"] / "memory.oom_control", "oom_kill") > 0

    def pids_exhausted(self) -> bool:
        d = self.dirs.get("unified") or self.dirs.get("pids")
        return d is not None and _counter(d / "pids.events", "max") > 0

    def cpu_usage_ns(self) -> int:
        if self.layout.version == 2:
            return _counter(self.dirs["unified"] / "cpu.stat", "usage_usec") * 1000
        d = self.dirs.get("cpuacct")
        return int(_read(d / "cpuacct.usage", "0").strip() or 0) if d else 0

    # -- teardown -----------------------------------------------------------------------

    def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL everything in the group and wait until it is empty."""
        if not any(Path(os.fsdecode(p)).exists() for p in self._procs_files):
            return
        deadline = time.monotonic() + timeout
        kill_file = self.dirs.get("unified", Path("/nonexistent")) / "cgroup.kill"
        freezer = self.dirs.get("freezer")
        pause = _Backoff()
        while self.pids():
            if kill_file.exists():
                _write(kill_file, "1")
            elif freezer is not None and freezer.exists():
                # Frozen tasks cannot fork between our read and our kill; SIGKILL is
                # delivered to frozen tasks once thawed.
                _write(freezer / "freezer.state", "FROZEN")
                self._wait_frozen(freezer, deadline)
                for pid in self.pids():
                    _kill(pid)
                _write(freezer / "freezer.state", "THAWED")
            else:
                for pid in self.pids():
                    _kill(pid)
            if time.monotonic() > deadline:
                raise CorralError(f"cgroup {self.name}: processes survive SIGKILL: {self.pids()}")
            pause()

    @staticmethod
    def _wait_frozen(freezer: Path, deadline: float) -> None:
        while _read(freezer / "freezer.state", "FROZEN").strip() == "FREEZING":
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)

    def destroy(self) -> None:
        """Kill what is left and remove the group's directories (idempotent)."""
        self.kill_all()
        for d in dict.fromkeys(self.dirs.values()):
            deadline = time.monotonic() + 1.0
            pause = _Backoff()
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY: exiting tasks not yet gone from the group
                    if time.monotonic() > deadline:
                        raise CorralError(f"cgroup: cannot remove {d}") from None
                    pause()

    @classmethod
    def gc(cls, live_names: set[str] | frozenset[str],
           layout: CgroupLayout | None = None) -> list[str]:
        """Destroy every corral cgroup whose name is not in ``live_names``; return their names."""
        layout = layout or detect_layout()
        removed = []
        for name in list_corral_cgroups(layout):
            if name not in live_names:
                cls.open(name, layout).destroy()
                removed.append(name)
        return removed


class _Backoff:
    """Sleeps of 0.5 ms doubling to 5 ms: the tasks of a sandbox whose command just ended
    usually leave its group within a millisecond or two, so a fixed long poll would only
    delay the teardown."""

    def __init__(self) -> None:
        self.delay = 0.0005

    def __call__(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 0.005)


def _mkdir(path: Path, created: list[Path]) -> None:
    # The shared ``corral/`` parent may be removed by a concurrent gc between our two mkdirs.
    for attempt in range(3):
        try:
            path.parent.mkdir(exist_ok=True)
            path.mkdir()
        except FileNotFoundError:
            if attempt == 2:
                raise
            continue
        except FileExistsError:
            raise CorralError(f"cgroup {path} already exists") from None
        created.append(path)
        return


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def list_corral_cgroups(layout: CgroupLayout | None = None) -> list[str]:
    """Names of the groups under ``corral/`` in any hierarchy."""
    layout = layout or detect_layout()
    roots = [layout.v2] if layout.version == 2 else list(layout.v1.values())
    names: set[str] = set()
    for root in roots:
        if root is None:
            continue
        try:
            names.update(e.name for e in os.scandir(root / PARENT) if e.is_dir()
                         and _NAME.fullmatch(e.name))
        except FileNotFoundError:
            continue
    return sorted(names)
