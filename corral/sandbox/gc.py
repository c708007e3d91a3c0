"""Cleaning up after launchers that died without tearing down (``corral sandbox gc``).

A launcher killed with SIGKILL cannot run its ``finally``. What it leaves: its registry entry
(and so its uid reservation), its cgroup, its sandbox directory (ephemeral workspace and home).
Its processes die with it (bwrap ``--die-with-parent``), and with them its network namespace and
nft table (which live only in that namespace); mounts never reach the host mount table. So gc
needs only the registry: for each entry whose launcher is gone, kill what is left in the
cgroup, remove the cgroup and the directory, then release the entry. Live sandboxes are never
touched.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field

from corral.sandbox import registry

__all__ = ["Collected", "collect"]


@dataclass
class Collected:
    removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _drop_cgroup(name: str) -> None:
    from corral.sandbox.cgroups import Cgroup

    opener = getattr(Cgroup, "open", None)
    cg = opener(name) if opener is not None else None
    if cg is None:
        return
    cg.kill_all()
    cg.destroy()


def collect() -> Collected:
    out = Collected()
    for entry in registry.entries():
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
    return out
