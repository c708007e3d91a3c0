"""Policies shipped with corral, used as ``-p builtin:NAME`` (YAML files in this directory)."""

from __future__ import annotations

import re
from pathlib import Path

from corral.policy.errors import PolicyError

__all__ = ["builtin_names", "builtin_path", "describe_builtins", "locate"]

_DIR = Path(__file__).parent
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


def builtin_path(name: str) -> Path | None:
    if not _NAME.fullmatch(name):
        return None
    path = _DIR / f"{name}.yaml"
    return path if path.is_file() else None


def builtin_names() -> list[str]:
    return sorted(p.stem for p in _DIR.glob("*.yaml"))


def describe_builtins() -> list[tuple[str, str]]:
    """``(name, description)`` of every built-in, read with the YAML safe loader."""
    import yaml

    out = []
    for name in builtin_names():
        data = yaml.safe_load((_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        out.append((name, str(data.get("description", "")) if isinstance(data, dict) else ""))
    return out


def locate(spec: str) -> tuple[str, Path]:
    """``(display name, path)`` for a ``-p`` argument; ``PolicyError`` if it does not exist."""
    if spec.startswith("builtin:"):
        path = builtin_path(spec[len("builtin:") :])
        if path is None:
            raise PolicyError([f"{spec}: no such built-in policy (see 'corral policy list')"])
        return spec, path
    path = Path(spec)
    if path.is_dir():
        raise PolicyError([f"{spec}: is a directory, not a policy file"])
    if not path.is_file():
        raise PolicyError([f"{spec}: no such policy file" if not path.exists()
                           else f"{spec}: not a regular file"])
    return spec, path
