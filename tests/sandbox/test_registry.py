"""The sandbox registry: unique uids under concurrency, across state dirs, and dead launchers."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from conftest import require_root

from corral.sandbox import registry

pytestmark = pytest.mark.root


def _reserve_in(state: str, out: multiprocessing.Queue, done: object) -> None:  # type: ignore[type-arg]
    os.environ["CORRAL_HOME"] = state
    entry = registry.reserve(["p"])
    out.put(entry.uid)
    done.wait(30)  # type: ignore[attr-defined]  # hold the lease until the parent has all uids


def test_concurrent_reservations_across_state_dirs_never_share_a_uid(tmp_path: Path) -> None:
    require_root()
    ctx = multiprocessing.get_context("fork")
    q: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    done = ctx.Event()
    procs = [ctx.Process(target=_reserve_in, args=(str(tmp_path / f"s{i % 3}"), q, done))
             for i in range(12)]
    for p in procs:
        p.start()
    uids = [q.get(timeout=30) for _ in procs]
    done.set()
    for p in procs:
        p.join(timeout=30)
    assert len(set(uids)) == 12  # three registries, one machine-wide lease per uid
    assert all(registry.UID_BASE <= u < registry.UID_BASE + registry.UID_RANGE for u in uids)


def test_uid_never_collides_with_passwd_and_is_reused_after_release(corral_env) -> None:
    require_root()
    first = registry.reserve([])
    assert first.uid not in registry._host_ids("/etc/passwd")
    assert registry.launcher_alive(first)
    registry.release(first)
    again = registry.reserve([])
    assert again.uid == first.uid
    registry.release(again)


def test_dead_launcher_keeps_uid_until_gc(corral_env) -> None:
    require_root()
    entry = registry.reserve([])
    entry.pid, entry.pid_start = 999_999_999, 1  # a launcher that no longer exists
    registry.update(entry)
    assert not registry.launcher_alive(entry)
    registry._leases.pop(entry.id)  # as if the launcher had died: its lease fd is gone
    other = registry.reserve([])
    assert other.uid != entry.uid  # the leftover entry still holds its uid
    from corral.sandbox import collect_leftovers

    assert entry.id in collect_leftovers().removed
    assert [e.id for e in registry.entries()] == [other.id]
    registry.release(other)


def test_gc_removes_empty_cgroups_no_registry_knows(corral_env) -> None:
    """A launcher killed under another CORRAL_HOME leaves a cgroup this registry never saw:
    gc removes it once it is empty and old, and never touches a group with processes."""
    require_root()
    import subprocess
    import uuid

    from corral.policy.types import Limits
    from corral.sandbox import collect_leftovers
    from corral.sandbox.cgroups import Cgroup, list_corral_cgroups

    orphan = Cgroup.create(f"corral-t{uuid.uuid4().hex[:8]}", Limits())
    busy = Cgroup.create(f"corral-t{uuid.uuid4().hex[:8]}", Limits())
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        busy.attach(sleeper.pid)
        assert collect_leftovers().removed == []  # both are younger than the default minimum age
        removed = collect_leftovers(min_age=0).removed
        assert f"cgroup {orphan.name}" in removed
        assert f"cgroup {busy.name}" not in removed
        names = list_corral_cgroups()
        assert orphan.name not in names and busy.name in names
    finally:
        sleeper.kill()
        sleeper.wait()
        busy.destroy()
        orphan.destroy()


def test_release_unlinks_the_lease_files(corral_env) -> None:
    """Ending a lease removes its /run/corral/uid-<uid>.lock (they used to pile up, one per
    uid ever leased), for the sandbox's uid and its helpers' alike."""
    require_root()
    entry = registry.reserve([])
    helper = registry.reserve_helper(entry)
    paths = [registry.LEASE_DIR / f"uid-{u}.lock" for u in (entry.uid, helper)]
    assert all(p.exists() for p in paths)
    registry.release(entry)
    assert not any(p.exists() for p in paths)


def test_gc_unlinks_stray_lease_files_but_never_a_held_one(
        corral_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    import fcntl

    from corral.sandbox import collect_leftovers

    monkeypatch.setattr(registry, "LEASE_DIR", tmp_path)
    stray = [tmp_path / f"uid-{registry.UID_BASE + i}.lock" for i in range(5)]
    for p in stray:
        p.touch()
    other = tmp_path / "zygote-abc.lock"  # not a uid lease: left alone
    other.touch()
    held = registry._lease(registry.UID_BASE + 7)
    assert held >= 0
    try:
        done = collect_leftovers()
        assert done.leases == 5, done
        assert not any(p.exists() for p in stray)
        assert other.exists()
        assert (tmp_path / f"uid-{registry.UID_BASE + 7}.lock").exists()
        # and the held one is still exclusively ours
        probe = os.open(tmp_path / f"uid-{registry.UID_BASE + 7}.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(probe)
    finally:
        registry._drop_lease(held, registry.UID_BASE + 7)


def _lease_loop(uid: int, rounds: int, holders: object, overlaps: object) -> None:
    import time

    for _ in range(rounds):
        fd = registry._lease(uid)
        if fd < 0:
            continue
        with holders.get_lock():  # type: ignore[attr-defined]
            holders.value += 1  # type: ignore[attr-defined]
            if holders.value > 1:  # type: ignore[attr-defined]
                overlaps.value += 1  # type: ignore[attr-defined]
        time.sleep(0.0002)
        with holders.get_lock():  # type: ignore[attr-defined]
            holders.value -= 1  # type: ignore[attr-defined]
        registry._drop_lease(fd, uid)


def test_unlink_on_release_never_lets_two_launchers_hold_one_uid(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flock + unlink race: a taker that opened the file just before its holder unlinked
    it would lock an orphan inode while a third process creates and locks a fresh file. The
    taker's inode re-check makes that impossible; processes hammering one uid never overlap."""
    require_root()
    monkeypatch.setattr(registry, "LEASE_DIR", tmp_path)
    ctx = multiprocessing.get_context("fork")
    holders, overlaps = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [ctx.Process(target=_lease_loop, args=(registry.UID_BASE, 3000, holders, overlaps))
             for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 6
    assert overlaps.value == 0
    assert list(tmp_path.iterdir()) == []  # and nothing is left behind
