"""Which host paths a sandbox may see, and which it must never see.

Invariants:
- The always-hidden set (DESIGN "Always hidden") is computed here and only here: the corral
  state and config dirs, ``/etc/shadow``, ``/etc/gshadow``, ssh host keys, ``/run`` and
  ``/var/run``; ``files.hide`` adds to it and nothing removes from it. Paths are compared after
  resolving symlinks, so a workspace reached through a symlink cannot sneak into a hidden dir.
- A workspace, home or read path that lies inside a hidden path is refused (exit 125) before
  anything is created. A hidden path that lies inside a visible tree is masked (``mounts``).
- Host home directories (``/root``, ``/home/*``) are never mounted at their host paths at all;
  a workspace inside one is visible only at ``/workspace``.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from corral.errors import CorralError
from corral.paths import config_dir, state_dir
from corral.sandbox.spec import SandboxSpec

__all__ = ["EXIT_CORRAL", "expand_user", "hidden_paths", "invoking_user", "validate"]

EXIT_CORRAL = 125


def invoking_user() -> tuple[int, int, str]:
    """(uid, gid, home) of the human behind this run: ``SUDO_UID`` under sudo, else ourselves."""
    uid = int(os.environ.get("SUDO_UID", os.getuid()))
    try:
        pw = pwd.getpwuid(uid)
        return uid, pw.pw_gid, pw.pw_dir
    except KeyError:
        return uid, int(os.environ.get("SUDO_GID", os.getgid())), os.environ.get("HOME", "/")


def expand_user(path: Path) -> Path:
    text = str(path)
    if text == "~" or text.startswith("~/"):
        return Path(invoking_user()[2] + text[1:])
    return path


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def _ssh_host_keys() -> list[str]:
    try:
        names = os.listdir("/etc/ssh")
    except OSError:
        return []
    return [f"/etc/ssh/{n}" for n in names if n.startswith("ssh_host_")]


def hidden_paths(spec: SandboxSpec) -> list[Path]:
    """Every host path the sandbox must not see, resolved, existing or not."""
    raw: list[Path | str] = [
        state_dir(),
        config_dir(),
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/shadow-",
        "/etc/gshadow-",
        "/run",
        "/var/run",
        *_ssh_host_keys(),
        *(expand_user(p) for p in spec.files.hide),
    ]
    return sorted({_real(p) for p in raw})


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_visible(what: str, path: Path, hidden: list[Path]) -> None:
    for h in hidden:
        if _inside(path, h):
            raise CorralError(
                f"{what} {path} is inside the hidden path {h}; choose a directory outside it",
                exit_code=EXIT_CORRAL,
            )


def validate(spec: SandboxSpec) -> list[Path]:
    """Refuse a spec whose visible paths are missing or hidden; return the hidden set."""
    hidden = hidden_paths(spec)
    if spec.workspace is not None:
        ws = _real(spec.workspace)
        if not ws.is_dir():
            raise CorralError(
                f"workspace {spec.workspace} does not exist or is not a directory",
                exit_code=EXIT_CORRAL,
            )
        _check_visible("workspace", ws, hidden)
    if spec.home is not None:
        home = _real(spec.home)
        if home.exists() and not home.is_dir():
            raise CorralError(f"home {spec.home} is not a directory", exit_code=EXIT_CORRAL)
        _check_visible("home", home, hidden)
    for extra in spec.files.read:
        path = _real(expand_user(extra))
        if not path.exists():
            raise CorralError(f"files.read path {extra} does not exist", exit_code=EXIT_CORRAL)
        _check_visible("files.read path", path, hidden)
    for inside in spec.extra_files:
        if not inside.startswith("/") or ".." in inside.split("/"):
            raise CorralError(f"extra file path {inside!r} must be absolute", exit_code=EXIT_CORRAL)
    return hidden
