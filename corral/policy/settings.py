"""The launcher's share of the policy types: ``Limits`` and ``FilesConfig``.

They are immutable ``NamedTuple`` records, not dataclasses, because ``corral run`` builds its
sandbox spec from them on every launch, with or without a policy: the ``dataclasses`` module
(which imports ``inspect``, ``ast``, ``dis`` and ``tokenize``) and the generated dataclass
methods cost that path ~10 ms before any sandbox work starts. ``corral.policy.types`` re-exports
both, so every other module keeps importing them from there.

Invariants: field names and defaults are part of the contract (``corral.policy.compose`` builds
them from merged policy settings by name); values are immutable (tuples of paths, numbers,
``None`` for unlimited), so a default instance can be shared safely.
"""

# No ``from __future__ import annotations`` here: a NamedTuple compiles each string annotation
# into a ForwardRef when its class is made, ~0.1 ms a field on every corral run.

from pathlib import Path
from typing import Literal, NamedTuple

__all__ = ["FileApproval", "FilesConfig", "Limits"]

FileApproval = Literal["none", "writes", "all"]


class Limits(NamedTuple):
    """Resource limits; ``None`` means unlimited. Sizes in bytes, times in seconds."""

    memory: int | None = 4 * 1024**3
    pids: int | None = 1024
    cpu: float | None = 2.0
    wall: float | None = None
    idle: float | None = 30 * 60.0


class FilesConfig(NamedTuple):
    approval: FileApproval = "writes"
    workspace: Path | None = None
    home: Path | None = None
    read: tuple[Path, ...] = ()
    write: tuple[Path, ...] = ()  # ``--rw``: extra writable mounts, ID-mapped
    hide: tuple[Path, ...] = ()
