"""``corral policy init`` and ``corral policy show``: a commented starter policy, the built-ins.

Invariants: ``init`` never overwrites a file (unless ``--force``) and only writes text that
``corral policy check`` accepts (the starter, or a built-in renamed ``my-NAME`` so that it
composes with the original); ``show`` prints a built-in's file exactly as shipped.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from corral.errors import UserInputError
from corral.policy.builtin import builtin_names, builtin_path

__all__ = ["builtin_text", "starter_text", "write_starter"]

_TEMPLATE = Path(__file__).parent / "templates" / "starter.yaml"


def builtin_text(spec: str) -> str:
    name = spec.removeprefix("builtin:")
    path = builtin_path(name)
    if path is None:
        raise UserInputError(f"{spec}: no such built-in policy (one of: "
                             f"{', '.join(builtin_names())})")
    return path.read_text(encoding="utf-8")


def starter_text(source: str | None) -> str:
    if source is None:
        return _TEMPLATE.read_text(encoding="utf-8")
    if not source.startswith("builtin:"):
        raise UserInputError(f"--from {source}: expected builtin:NAME (see `corral policy list`)")
    name = source.removeprefix("builtin:")
    text = builtin_text(source)
    header = (f"# Starter policy based on builtin:{name} (corral policy show builtin:{name}).\n"
              "#   check it:  corral policy check THIS_FILE\n"
              "#   use it:    corral run -p THIS_FILE CMD...\n")
    return header + re.sub(r"(?m)^name: .*$", f"name: my-{name}", text, count=1)


def write_starter(target: str, source: str | None, *, force: bool) -> str:
    """Write the starter to ``target`` (``-``: stdout); returns what to tell the user."""
    text = starter_text(source)
    if target == "-":
        sys.stdout.write(text)
        return ""
    path = Path(target)
    if path.is_dir():
        raise UserInputError(f"{target}: is a directory; give a file name like policy.yaml")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise UserInputError(f"{target}: already exists (use --force to overwrite)") from None
    except OSError as err:
        raise UserInputError(f"{target}: cannot write: {err.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return f"wrote {target}; check it with: corral policy check {target}"
