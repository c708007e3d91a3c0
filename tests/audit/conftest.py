"""Fixtures for audit tests: a fresh store in a temp dir, tmpfs mounts that always go away."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root

from corral.audit import AuditStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    s = AuditStore.open(tmp_path / "state" / "audit.db")
    yield s
    with contextlib.suppress(Exception):
        s.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[object]:
    """``mount(size, ro=False) -> Path``: a tmpfs under tmp_path, unmounted at teardown."""
    require_root()
    mounted: list[Path] = []

    def mount(size: str, ro: bool = False) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        opts = f"size={size},mode=0700" + (",ro" if ro else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "corral-test", str(target)], check=True)
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)
