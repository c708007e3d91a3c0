"""Landlock feature detection from the host, for pre-flight checks before a sandbox starts.

The shim (``corral/sandbox/_privdrop.py``) applies the actual ruleset inside the sandbox; it
cannot import corral, so it keeps its own copy of the constants below (a test holds the two
in step).

Invariant: ``landlock_abi()`` never raises; 0 means "no usable Landlock" (not compiled in,
disabled at boot, or an architecture where the syscall is unknown), and callers must refuse to
start a sandbox that needs it rather than run without it.
"""

from __future__ import annotations

import ctypes
from functools import cache

__all__ = [
    "MIN_ABI_FOR_SCOPES",
    "SCOPE_ABSTRACT_UNIX_SOCKET",
    "SCOPE_SIGNAL",
    "landlock_abi",
    "missing_features",
]

SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
LANDLOCK_CREATE_RULESET_VERSION = 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1
MIN_ABI_FOR_SCOPES = 6


@cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 if Landlock cannot be used."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = int(
            libc.syscall(
                ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
                None,
                ctypes.c_size_t(0),
                ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
            )
        )
    except (OSError, AttributeError):
        return 0
    return max(abi, 0)


def missing_features(*, scopes: bool = True) -> list[str]:
    """What the shim would refuse over, as user-facing phrases (empty when all is present)."""
    abi = landlock_abi()
    if abi == 0:
        return ["Landlock (needs Linux 5.13+ with landlock enabled in the lsm= boot list)"]
    if scopes and abi < MIN_ABI_FOR_SCOPES:
        return [f"Landlock ABI {MIN_ABI_FOR_SCOPES} for socket/signal scoping (Linux 6.12+; "
                f"this kernel has ABI {abi})"]
    return []
