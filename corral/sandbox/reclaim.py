"""Cleaning up after launchers that died without tearing down (``corral sandbox gc``).

A launcher killed with SIGKILL cannot run its ``finally``. What it leaves: its registry entry
(and so its uid reservation), its cgroup, its sandbox directory (ephemeral workspace and home).
Its processes die with it (bwrap ``--die-with-parent``), and with them its network namespace and
nft table (which live only in that namespace); mounts never reach the host mount table. So gc
needs only the registry: for each entry whose launcher is gone, kill what is left in the
cgroup, remove the cgroup and the directory, then release the entry. Live sandboxes are never
touched.

Cgroups are machine-wide while registries are per state dir, so a launcher killed under another
``CORRAL_HOME`` leaves a cgroup no registry here names. Such a group is removed only when it is
empty and older than ``min_age`` (a live launcher creates its group and attaches its child
within milliseconds, so an old empty group belongs to no one).

Lease files in ``/run/corral`` (``uid-<uid>.lock``) that no launcher holds are unlinked too
(``registry.collect_stray_leases``: under their lock, so a new lessee is never robbed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field

from corral.sandbox import registry

__all__ = ["Collected", "collect_leftovers"]


@dataclass
class Collected:
    removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    leases: int = 0  # stray uid lease files unlinked


def _drop_cgroup(name: str) -> None:
    from corral.sandbox.cgroups import Cgroup

    opener = getattr(Cgroup, "open", None)
    cg = opener(name) if opener is not None else None
    if cg is None:
        return
    cg.kill_all()
    cg.destroy()


ORPHAN_MIN_AGE = 60.0


def _orphan_cgroups(known: set[str], min_age: float) -> list[str]:
    from corral.sandbox.cgroups import Cgroup, list_corral_cgroups

    removed = []
    for name in list_corral_cgroups():
        if name in known:
            continue
        cg = Cgroup.open(name)
        if cg.pids():
            continue  # someone's live sandbox, maybe under another state dir
        ages = []
        for d in cg.dirs.values():
            with contextlib.suppress(FileNotFoundError):
                ages.append(time.time() - os.stat(d).st_mtime)
        if not ages or min(ages) < min_age:
            continue
        cg.destroy()
        removed.append(f"cgroup {name}")
    return removed


def collect_leftovers(min_age: float = ORPHAN_MIN_AGE) -> Collected:
    out = Collected()
    known: set[str] = set()
    for entry in registry.entries():
        if entry.cgroup:
            known.add(entry.cgroup)
        if registry.launcher_alive(entry):
            continue
        try:
            if entry.cgroup:
                _drop_cgroup(entry.cgroup)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(entry.dir)
            registry.release(entry)
            out.removed.append(entry.id)
        except Exception as err:
            out.problems.append(f"{entry.id}: {err}")
    try:
        out.removed.extend(_orphan_cgroups(known, min_age))
    except Exception as err:
        out.problems.append(f"orphan cgroups: {err}")
    try:
        out.leases = registry.collect_stray_leases()
    except OSError as err:
        out.problems.append(f"uid leases: {err}")
    return out
