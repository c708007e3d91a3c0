"""The sandbox registry: one JSON entry per live sandbox under ``state_dir()/sandboxes``.

Invariants:
- A sandbox uid/gid is reserved by writing its entry while holding an exclusive ``flock`` on
  ``sandboxes/.lock``; the uid is the lowest in the reserved range that no entry and no line of
  the host's ``/etc/passwd``/``/etc/group`` uses. So concurrent launchers never share a uid.
- Across state dirs (several corral installs or test runs on one machine) a uid is also leased
  machine-wide: the launcher holds an exclusive ``flock`` on ``/run/corral/uid-<uid>.lock``
  for the sandbox's lifetime. The kernel drops the lease when the launcher dies, and a uid
  whose lease is held elsewhere is never handed out.
- Lease files do not pile up: ``release`` unlinks the file while it still holds the lock, and
  ``collect_stray_leases`` (``corral sandbox gc``) unlinks files nobody holds, also only while
  holding their lock. A taker re-checks after its ``flock`` that the file it locked is still
  the one at the path (same device and inode); if it was unlinked meanwhile it retries on a
  fresh file. So two holders of one uid's lease can never both believe they hold it.
- An entry names its launcher by pid *and* start time, so a recycled pid is never taken for a
  live launcher. An entry whose launcher is gone is a leftover: ``gc`` removes it and what it
  lists (cgroup, directories) — the uid stays reserved until then.
- Each sandbox owns ``sandboxes/<id>/`` (ephemeral workspace/home, mount staging points); it is
  deleted with the entry.
- A sandbox may hold helper uids (``reserve_helper``: the egress proxy runs as its own
  unprivileged uid, never ``nobody``, never the agent's). They come from the same range under
  the same lock and lease, are listed in the entry (``helper_uids``) so no other sandbox gets
  them, and are freed with the entry by ``release`` (teardown) or ``gc``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corral.dirs import ensure_state_dir, state_dir

__all__ = [
    "UID_BASE",
    "UID_RANGE",
    "Entry",
    "collect_stray_leases",
    "entries",
    "launcher_alive",
    "registry_dir",
    "release",
    "reserve",
    "reserve_helper",
    "update",
]

UID_BASE = 2_000_000_000
UID_RANGE = 1_000_000
LEASE_DIR = Path("/run/corral")
_leases: dict[str, tuple[int, int]] = {}  # sandbox id -> (uid, fd holding its lease)
_helper_leases: dict[str, list[tuple[int, int]]] = {}  # sandbox id -> helper (uid, fd)s


class Entry:
    """One registry record (mutable: helper uids are added to a live entry).

    A plain class rather than a dataclass: the registry is on every ``corral run``, which
    avoids loading ``dataclasses``. ``as_dict`` is the JSON form; ``Entry(**as_dict())``
    round-trips it, and an unknown key in a file makes the entry unreadable (``TypeError``).
    """

    __slots__ = ("cgroup", "child_pid", "command", "created", "gid", "helper_uids", "id", "pid",
                 "pid_start", "policies", "uid", "workspace")

    def __init__(self, id: str, uid: int, gid: int, pid: int, pid_start: int, created: float,
                 policies: list[str] | None = None, cgroup: str | None = None,
                 child_pid: int | None = None, helper_uids: list[int] | None = None,
                 command: list[str] | None = None, workspace: str | None = None) -> None:
        self.id, self.uid, self.gid = id, uid, gid
        self.pid, self.pid_start, self.created = pid, pid_start, created
        self.policies: list[str] = list(policies or ())
        self.cgroup = cgroup
        self.child_pid = child_pid
        self.helper_uids: list[int] = list(helper_uids or ())
        self.command: list[str] = list(command or ())  # the first command started inside
        self.workspace = workspace  # host directory at /workspace

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    def __repr__(self) -> str:
        return f"Entry({', '.join(f'{k}={v!r}' for k, v in self.as_dict().items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    @property
    def dir(self) -> Path:
        return registry_dir() / self.id


_FIELDS = ("id", "uid", "gid", "pid", "pid_start", "created", "policies", "cgroup", "child_pid",
           "helper_uids", "command", "workspace")


def registry_dir() -> Path:
    return state_dir() / "sandboxes"


def _start_time(pid: int) -> int:
    """The process start time in clock ticks (field 22 of /proc/PID/stat), 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    return int(data.rsplit(b")", 1)[1].split()[19])


def launcher_alive(entry: Entry) -> bool:
    return entry.pid_start != 0 and _start_time(entry.pid) == entry.pid_start


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    ensure_state_dir()
    reg = registry_dir()
    reg.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(reg / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield reg
    finally:
        os.close(fd)


def _load(path: Path) -> Entry | None:
    try:
        return Entry(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def entries() -> list[Entry]:
    reg = registry_dir()
    if not reg.is_dir():
        return []
    found = (_load(p) for p in sorted(reg.glob("*.json")))
    return [e for e in found if e is not None]


def _host_ids(path: str) -> set[int]:
    ids: set[int] = set()
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(":")
            if len(parts) > 2 and parts[2].isdigit():
                ids.add(int(parts[2]))
    return ids


def _write(entry: Entry) -> None:
    path = registry_dir() / f"{entry.id}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(entry.as_dict(), f)
    os.replace(tmp, path)


def reserve(policies: list[str]) -> Entry:
    """Reserve a fresh id and uid/gid and create the sandbox's private directory."""
    with _locked() as reg:
        uid, lease = _free_uid()
        sid = os.urandom(4).hex()
        while (reg / sid).exists():
            sid = os.urandom(4).hex()
        _leases[sid] = (uid, lease)
        pid = os.getpid()
        # the cgroup is named before it exists, so gc finds it even if we die creating it
        entry = Entry(sid, uid, uid, pid, _start_time(pid), time.time(), list(policies),
                      cgroup=f"corral-{sid}")
        (reg / sid).mkdir(mode=0o700)
        _write(entry)
        return entry


def _free_uid() -> tuple[int, int]:
    """The lowest free uid in the range and the fd of its lease; call holding the lock."""
    known = entries()
    used = {e.uid for e in known} | {e.gid for e in known}
    used |= {u for e in known for u in e.helper_uids}
    used |= _host_ids("/etc/passwd") | _host_ids("/etc/group")
    LEASE_DIR.mkdir(mode=0o700, exist_ok=True)
    for candidate in range(UID_BASE, UID_BASE + UID_RANGE):
        if candidate not in used:
            lease = _lease(candidate)
            if lease >= 0:
                return candidate, lease
    raise OSError("no free sandbox uid left; run `corral sandbox gc`")


def reserve_helper(entry: Entry) -> int:
    """Reserve one more uid (gid = uid) for a helper of this sandbox (its egress proxy)."""
    with _locked():
        uid, lease = _free_uid()
        _helper_leases.setdefault(entry.id, []).append((uid, lease))
        entry.helper_uids.append(uid)
        _write(entry)
        return uid


def _lease_path(uid: int) -> Path:
    return LEASE_DIR / f"uid-{uid}.lock"


def _still_linked(fd: int, path: Path) -> bool:
    """Whether ``fd`` (locked) is still the file at ``path``: an unlinker may have removed it
    between our open and our flock, and a lock on an unlinked file leases nothing."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _lease(uid: int) -> int:
    """An fd holding the machine-wide lease on ``uid``, or -1 if another launcher holds it."""
    path = _lease_path(uid)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return -1
        if _still_linked(fd, path):
            return fd
        os.close(fd)  # its holder unlinked it as it let go: lock the file now at the path


def _drop_lease(fd: int, uid: int | None) -> None:
    """End a lease: unlink its file while still holding the lock, then let go."""
    if uid is not None:
        path = _lease_path(uid)
        with contextlib.suppress(OSError):
            if _still_linked(fd, path):
                os.unlink(path)
    os.close(fd)


def collect_stray_leases() -> int:
    """Unlink the lease files of uids nobody holds (left by launchers that were killed, or by
    corral versions that kept them); returns how many were removed."""
    removed = 0
    try:
        names = os.listdir(LEASE_DIR)
    except FileNotFoundError:
        return 0
    for name in names:
        num = name[4:-5]
        if not (name.startswith("uid-") and name.endswith(".lock") and num.isdigit()):
            continue
        try:
            fd = os.open(LEASE_DIR / name, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live lease
            continue
        path = _lease_path(int(num))
        if _still_linked(fd, path):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
        os.close(fd)
    return removed


def update(entry: Entry) -> None:
    with _locked():
        _write(entry)


def release(entry: Entry) -> None:
    """Drop the entry (the uid becomes free). Its directory must already be gone or emptied."""
    with _locked() as reg:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(reg / f"{entry.id}.json")
        with contextlib.suppress(OSError):
            os.rmdir(reg / entry.id)
        for uid, fd in _helper_leases.pop(entry.id, []):
            _drop_lease(fd, uid)
        lease = _leases.pop(entry.id, None)
        if lease is not None:
            _drop_lease(lease[1], lease[0])
