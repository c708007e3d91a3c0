"""Refuse to start a sandbox when the state dir's filesystem is nearly full.

The audit trail, the registry and ephemeral workspaces live in the state dir; a sandbox
started on a nearly full disk could not be audited for long (the store then fails closed and
stops egress mid-run) and would compete with the host for the last bytes.

Rule: ``Sandbox.open`` refuses (exit 125, one line) unless the filesystem holding the state
dir has at least ``MIN_FREE_BYTES`` (1 GiB) free *and* at least ``MIN_FREE_PERCENT`` (5%) of
its size free, both as seen by an unprivileged writer (``f_bavail``). ``CORRAL_MIN_FREE``
changes the floors: ``"1GiB,5%"`` (the default), ``"512MiB"`` (bytes only), ``"2%"`` (share
only), ``"0"`` (no check). A malformed value is an error, not "no check" (fail closed).
"""

from __future__ import annotations

import os
from pathlib import Path

from corral.errors import CorralError
from corral.policy.units import parse_size

__all__ = ["ENV", "MIN_FREE_BYTES", "MIN_FREE_PERCENT", "check_free_space", "floors"]

ENV = "CORRAL_MIN_FREE"
MIN_FREE_BYTES = 1024**3
MIN_FREE_PERCENT = 5.0
EXIT_CORRAL = 125


def floors(value: str | None = None) -> tuple[int, float]:
    """(bytes, percent) from ``CORRAL_MIN_FREE`` (or ``value``); the defaults when unset."""
    raw = os.environ.get(ENV) if value is None else value
    if raw is None or not raw.strip():
        return MIN_FREE_BYTES, MIN_FREE_PERCENT
    need_bytes, need_pct = 0, 0.0
    for part in (p.strip() for p in raw.split(",")):
        try:
            if part.endswith("%"):
                need_pct = float(part[:-1])
                if not 0 <= need_pct < 100:
                    raise ValueError
            elif part != "0":
                need_bytes = parse_size(part) or 0
        except ValueError:
            raise CorralError(f"{ENV}={raw!r}: expected e.g. '1GiB,5%', '512MiB', '2%' or '0'",
                              exit_code=EXIT_CORRAL) from None
    return need_bytes, need_pct


def _human(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def check_free_space(state: Path) -> None:
    """Raise ``CorralError`` (exit 125) when the filesystem of ``state`` is below the floors."""
    need_bytes, need_pct = floors()
    if not need_bytes and not need_pct:
        return
    path = state
    while not path.exists() and path != path.parent:  # not created yet: its filesystem
        path = path.parent
    st = os.statvfs(path)
    free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    pct = 100.0 * free / size if size else 0.0
    if free < need_bytes or pct < need_pct:
        want = " and ".join(w for w in (_human(need_bytes) if need_bytes else "",
                                         f"{need_pct:g}%" if need_pct else "") if w)
        raise CorralError(
            f"not enough free disk space for the state dir {state}: {_human(free)} "
            f"({pct:.1f}%) free, {want} needed (set {ENV} to change, e.g. {ENV}=512MiB,2%)",
            exit_code=EXIT_CORRAL)
