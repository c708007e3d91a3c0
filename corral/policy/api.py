"""``resolve()``: load, validate, compose and compile policies, with a compiled-form cache.

The launch path pays for pydantic and YAML only when the policy files changed: the resolved
policy is pickled into ``state_dir()/policy-cache`` keyed by the sha256 of every file's bytes,
its real path, whether it is trusted, the config dir and corral's version.

Invariants:
- The cache is read only from a directory and file owned by this user and writable by no one
  else (unpickling trusts the bytes); any problem reading it falls back to a full load.
- The cache is written only when the state dir already exists and is writable; a failure to
  write never fails ``resolve``.
"""

from __future__ import annotations

import os
import pickle
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from corral import __version__, dirs
from corral._digest import sha256
from corral.policy.builtin import locate
from corral.policy.errors import PolicyError
from corral.policy.resolved import ResolvedPolicy

if TYPE_CHECKING:
    from corral.policy.quick import QuickPolicy

__all__ = ["cache_dir", "resolve"]

# Version 3: Decision has a status; the matcher decides on path readings.
_FORMAT = b"corral-policy-cache/3"
_KEEP = 64


def cache_dir() -> Path:
    return dirs.state_dir() / "policy-cache"


def _read_inputs(specs: list[str]) -> list[tuple[str, Path, bytes]]:
    out = []
    for spec in specs:
        source, path = locate(spec)
        try:
            out.append((spec, path, path.read_bytes()))
        except OSError as err:
            raise PolicyError([f"{source}: cannot read: {err}"]) from None
    return out


def _code_stamp() -> bytes:
    """Size and mtime of this package's modules, so an edited checkout never reads a pickle of
    objects whose classes changed under the same version number."""
    here = os.path.dirname(__file__)
    stamp = []
    for entry in sorted(os.scandir(here), key=lambda e: e.name):
        if entry.name.endswith(".py"):
            st = entry.stat()
            stamp.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(stamp).encode()


def _key(inputs: list[tuple[str, Path, bytes]], workspace: Path | None = None,
         quick: QuickPolicy | None = None) -> str:
    digest = sha256(_FORMAT + __version__.encode() + sys.version.encode() + _code_stamp())
    digest.update(f"workspace\0{workspace}\0".encode())
    if quick is not None:  # plain values only: their repr is stable across processes
        digest.update(f"quick\0{sorted(map(repr, quick.rules))}\0{quick.settings!r}\0"
                      f"{quick.lists!r}\0".encode())
    config = os.path.realpath(dirs.config_dir())
    digest.update(config.encode() + b"\0")
    for spec, path, data in inputs:
        real = os.path.realpath(path)
        trusted = os.path.commonpath([real, config]) == config
        digest.update(f"{spec}\0{real}\0{int(trusted)}\0{len(data)}\0".encode())
        digest.update(sha256(data).digest())
    return digest.hexdigest()


def _safe(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _cache_load(key: str) -> ResolvedPolicy | None:
    folder = cache_dir()
    try:
        if not _safe(os.stat(folder)):
            return None
        fd = os.open(folder / f"{key}.pickle", os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            if not _safe(os.fstat(handle.fileno())):
                return None
            value = pickle.load(handle)
    except Exception:  # missing, corrupt, or from an incompatible build: do a full load
        return None
    return value if isinstance(value, ResolvedPolicy) else None


def _cache_store(key: str, value: ResolvedPolicy) -> None:
    state = dirs.state_dir()
    if not os.access(state, os.W_OK | os.X_OK):
        return
    import tempfile

    folder = cache_dir()
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        if not _safe(os.stat(folder)):
            return
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, folder / f"{key}.pickle")
        entries = sorted(folder.glob("*.pickle"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-_KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        return


def resolve(specs: list[str] | tuple[str, ...], *, workspace: str | Path | None = None,
            use_cache: bool = True, quick: QuickPolicy | None = None) -> ResolvedPolicy:
    """Load, validate and compose ``-p`` arguments (paths or ``builtin:NAME``) in order.

    Raises ``PolicyError`` (exit 2) naming file:line of each problem or of both conflicting
    rules. ``resolve([])`` is the empty policy: default deny, default limits. ``workspace``
    (``--workspace``) overrides the policies' ``files.workspace``; it is made absolute.
    ``quick`` (``corral.policy.quick``: ``--allow``, ``--ro``, ...) is composed after them.
    """
    inputs = _read_inputs(list(specs))
    override = None if workspace is None else Path(os.path.abspath(workspace))
    key = _key(inputs, override, quick) if use_cache else ""
    if use_cache:
        cached = _cache_load(key)
        if cached is not None:
            return cached
    from corral.policy.compose import compose
    from corral.policy.load import load_policy

    loaded = []
    problems: list[str] = []
    for spec, _path, data in inputs:
        try:
            loaded.append(load_policy(spec, data.decode("utf-8")))
        except UnicodeDecodeError:
            problems.append(f"{spec}: not UTF-8 text")
        except PolicyError as err:
            problems += err.problems
    if problems:
        raise PolicyError(problems)
    result = compose([*loaded, *([quick] if quick is not None else [])], workspace=override)
    if use_cache:
        _cache_store(key, result)
    return result
