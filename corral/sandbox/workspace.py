"""Which host paths a sandbox may see, and which it must never see.

Invariants:
- The always-hidden set (DESIGN "Always hidden") is computed here and only here: the corral
  state and config dirs, ``/etc/shadow``, ``/etc/gshadow``, ssh host keys, ``/run`` and
  ``/var/run``; ``files.hide`` adds to it and nothing removes from it. Paths are compared after
  resolving symlinks, so a workspace reached through a symlink cannot sneak into a hidden dir.
- A workspace, home or read path that lies inside a hidden path is refused (exit 125) before
  anything is created. A hidden path that lies inside a visible tree is masked (``mounts``).
- A workspace or home is mounted writable and ID-mapped to the sandbox user, so it may not be
  ``/``, a system tree (``/etc``, ``/usr``, ``/var/lib`` ...) or anything inside one, nor contain
  a hidden path: a policy from a repository must not hand the agent write access to the host.
  A ``files.read`` path may not be ``/`` or one of the sandbox's own mount points. A ``--rw``
  directory (``files.write``) is mounted writable and ID-mapped at its host path: it is held to
  the workspace's rules and may not be or lie inside one of the sandbox's own mounts.
- Host home directories (``/root``, ``/home/*``) are never mounted at their host paths at all;
  a workspace inside one is visible only at ``/workspace``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path

from corral.dirs import config_dir, state_dir
from corral.errors import CorralError
from corral.sandbox.spec import SandboxSpec

__all__ = [
    "EXIT_CORRAL",
    "SYSTEM_TREES",
    "always_hidden",
    "expand_user",
    "hidden_paths",
    "invoking_user",
    "validate",
]

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
    extra = {_real(expand_user(p)) for p in spec.files.hide}
    return sorted(set(always_hidden()) | extra)


def always_hidden() -> list[Path]:
    """DESIGN's "always hidden" set, resolved: no policy can make these visible."""
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
    ]
    return sorted({_real(p) for p in raw})


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


SYSTEM_TREES = tuple(Path(p) for p in (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/proc",
    "/run", "/sbin", "/snap", "/srv", "/sys", "/usr", "/var/cache", "/var/lib", "/var/log",
    "/var/mail", "/var/spool",
))
_SANDBOX_MOUNTS = tuple(Path(p) for p in (
    "/", "/dev", "/home", "/home/corral", "/proc", "/run", "/tmp", "/var", "/workspace",
))


def _check_writable_root(what: str, path: Path) -> None:
    real_trees = {Path(os.path.realpath(t)) for t in SYSTEM_TREES}
    if path == Path("/") or any(_inside(path, t) for t in real_trees):
        raise CorralError(f"{what} {path} is a system directory; the agent may not write there",
                          exit_code=EXIT_CORRAL)
    for h in always_hidden():  # files.hide paths inside it are masked instead
        if path in h.parents:
            raise CorralError(f"{what} {path} contains the hidden path {h}; choose a directory "
                              "inside it that does not", exit_code=EXIT_CORRAL)
    if path == Path("/home"):
        raise CorralError(f"{what} {path} holds every user's home; choose one directory in it",
                          exit_code=EXIT_CORRAL)
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        if st.st_uid == 0 and invoking_user()[0] != 0:
            raise CorralError(f"{what} {path} belongs to root, not to you; corral maps its owner "
                              "to the agent, so use a directory you own", exit_code=EXIT_CORRAL)
        if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
            raise CorralError(f"{what} {path} is a shared directory (world-writable or sticky); "
                              "use a directory of your own inside it", exit_code=EXIT_CORRAL)


def _check_visible(what: str, path: Path, hidden: list[Path]) -> None:
    for h in hidden:
        if _inside(path, h):
            raise CorralError(
                f"{what} {path} is inside the hidden path {h}; choose a directory outside it",
                exit_code=EXIT_CORRAL,
            )


def _check_rw(extra: Path, hidden: list[Path]) -> None:
    """A ``--rw`` directory is writable and ID-mapped: held to a workspace's rules."""
    path = _real(expand_user(extra))
    if not path.is_dir():
        raise CorralError(f"--rw {extra}: no such directory", exit_code=EXIT_CORRAL)
    _check_visible("--rw directory", path, hidden)
    _check_writable_root("--rw directory", path)
    if path in _SANDBOX_MOUNTS or any(_inside(path, Path(m)) for m in ("/home/corral",
                                                                         "/workspace")):
        raise CorralError(f"--rw {extra} would cover the sandbox's own {path}",
                          exit_code=EXIT_CORRAL)


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
        _check_writable_root("workspace", ws)
    if spec.home is not None:
        home = _real(spec.home)
        if home.exists() and not home.is_dir():
            raise CorralError(f"home {spec.home} is not a directory", exit_code=EXIT_CORRAL)
        _check_visible("home", home, hidden)
        _check_writable_root("home", home)
    for extra in spec.files.read:
        path = _real(expand_user(extra))
        if not path.exists():
            raise CorralError(f"files.read path {extra} does not exist", exit_code=EXIT_CORRAL)
        _check_visible("files.read path", path, hidden)
        if path in _SANDBOX_MOUNTS:
            raise CorralError(f"files.read path {extra} would cover the sandbox's own {path}",
                              exit_code=EXIT_CORRAL)
    for extra in spec.files.write:
        _check_rw(extra, hidden)
    for inside in spec.extra_files:
        if not inside.startswith("/") or ".." in inside.split("/"):
            raise CorralError(f"extra file path {inside!r} must be absolute", exit_code=EXIT_CORRAL)
    return hidden
