"""Where corral keeps its state and reads its configuration.

The state dir (default ``/var/lib/corral``, ``CORRAL_HOME`` overrides) holds the credential
store, the audit database and the sandbox registry; it is root-only (0700). The config dir
(default ``/etc/corral``, ``CORRAL_CONFIG`` overrides) holds trusted policies: only policies
found there may use ``env:``, ``file:`` and ``cmd:`` secret sources.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["config_dir", "ensure_state_dir", "state_dir"]


def state_dir() -> Path:
    return Path(os.environ.get("CORRAL_HOME") or "/var/lib/corral").absolute()


def config_dir() -> Path:
    return Path(os.environ.get("CORRAL_CONFIG") or "/etc/corral").absolute()


def ensure_state_dir() -> Path:
    """Create the state dir root-only; tighten it if someone loosened it."""
    path = state_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path
