"""The compiled form of a project's policy, cached by the server's digest and the local input.

A fresh pull of an unchanged project policy would otherwise load it with pydantic and YAML on
every ``corral run --project`` (about a hundred milliseconds of imports alone); ``-p`` policies
have the same kind of cache (``corral.policy.api``).

Invariants:
- The key covers everything the compiled policy and its trust checks depend on except the
  filesystem: the server's digest (the composition's digest, checked against the documents when
  the entry was made), this build's policy code, the local input (each ``-p`` file's bytes, the
  quick flags, ``--workspace``), the config dir and its ``config.yaml`` bytes
  (``project_allow_private``), and the invoking user.
- What depends on the filesystem is checked again on every hit: the host paths the server's
  policies name (``trust.check_paths``: a symlink can change between runs) and each inline CA's
  root-only file; a CA file that is gone or not root-only's 0600 makes the entry a miss.
- Entries are read only from a root-owned 0700 directory and 0600 files (``O_NOFOLLOW``), and
  written atomically; any failure to read one is a miss, a failure to write one is ignored.
"""

from __future__ import annotations

import os
import pickle
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from corral import dirs
from corral._digest import sha256

if TYPE_CHECKING:
    from corral.policy.quick import QuickPolicy
    from corral.policy.resolved import ResolvedPolicy
    from corral.runtime.trust import PathSetting

__all__ = ["Compiled", "cache_dir", "key", "load", "store"]

_FORMAT = b"corral-project-cache/1"
_KEEP = 32


class Compiled(NamedTuple):
    policy: ResolvedPolicy  # the project's policy composed with the local input, CAs in files
    paths: list[PathSetting]  # host paths the server's policies name, for trust.check_paths


def cache_dir() -> Path:
    return dirs.state_dir() / "projects" / "compiled"


def _code_stamp() -> bytes:
    """Size and mtime of the policy package and of this launcher's trust modules, so a changed
    checkout never reads a pickle made by other code."""
    import corral.policy

    here = os.path.dirname(__file__)
    files = [os.path.join(here, n) for n in ("trust.py", "project.py", "project_cache.py")]
    pkg = os.path.dirname(corral.policy.__file__)
    files += [e.path for e in os.scandir(pkg) if e.name.endswith(".py")]
    out = []
    for path in sorted(files):
        st = os.stat(path)
        out.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(out).encode()


def key(digest: str, specs: Sequence[str], quick: QuickPolicy | None,
        workspace: str | None) -> str | None:
    """The entry's name, or None when a local input cannot be read (no cache then: the full
    load reports it)."""
    from corral import __version__
    from corral.policy import locate

    h = sha256(_FORMAT + __version__.encode() + b"\0" + digest.encode() + b"\0")
    h.update(_code_stamp())
    h.update(f"\0uid {os.environ.get('SUDO_UID', '')} {os.getuid()} {os.geteuid()}\0".encode())
    h.update(f"workspace\0{os.path.abspath(workspace) if workspace else None}\0".encode())
    if quick is not None:  # plain values only: their repr is stable across processes
        h.update(f"quick\0{sorted(map(repr, quick.rules))}\0{quick.settings!r}\0"
                 f"{quick.lists!r}\0".encode())
    config = dirs.config_dir()
    h.update(f"config\0{os.path.realpath(config)}\0".encode())
    try:
        h.update(sha256((config / "config.yaml").read_bytes()).digest())
    except FileNotFoundError:
        h.update(b"no config.yaml")
    except OSError:
        return None
    for spec in specs:
        try:
            _source, path = locate(spec)
            data = path.read_bytes()
        except Exception:
            return None
        h.update(f"\0{spec}\0{os.path.realpath(path)}\0{len(data)}\0".encode())
        h.update(sha256(data).digest())
    return h.hexdigest()


def _owned(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _cas_intact(policy: ResolvedPolicy) -> bool:
    for rule in policy.rules:
        if rule.tls_ca is None:
            continue
        if not isinstance(rule.tls_ca, Path):
            return False  # the launcher writes every CA it trusts to a root-only file
        try:
            st = os.stat(rule.tls_ca, follow_symlinks=False)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or not _owned(st):
            return False
    return True


def load(name: str) -> Compiled | None:
    folder = cache_dir()
    try:
        if not _owned(os.stat(folder.parent)) or not _owned(os.stat(folder)):
            return None
        fd = os.open(folder / f"{name}.pickle", os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode) or not _owned(st):
                return None
            value: Any = pickle.load(handle)
    except Exception:
        return None
    if not isinstance(value, tuple) or len(value) != 2:
        return None
    compiled = Compiled(*value)
    return compiled if _cas_intact(compiled.policy) else None


def store(name: str, compiled: Compiled) -> None:
    folder = cache_dir()
    try:
        (dirs.ensure_state_dir() / "projects").mkdir(mode=0o700, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        if not _owned(os.stat(folder.parent)) or not _owned(os.stat(folder)):
            return
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            pickle.dump(tuple(compiled), out, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, folder / f"{name}.pickle")
        entries = sorted(folder.glob("*.pickle"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-_KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        return
