"""Rules every option and argument of the typer tree obeys, installed once over the whole tree.

Invariants (hold for every command, including ones added later, without a per-option edit):
- An empty or blank string is never a value: ``--sandbox ''``, ``-p ''``, ``--workspace ''`` are
  usage errors (a ``Path`` option would otherwise silently turn ``''`` into ``.``).
- A number is finite and within its range: the ``min``/``max`` the option declares, else
  ``0 <= n <= 1e9`` (no corral option takes a negative count or duration, and anything larger
  overflows SQLite integers, ``time.sleep`` or timestamps far from the user's intent).
- Every usage error reaches the user as one line naming the command and the argument, and
  exits 2 (``usage_line``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import typer

__all__ = ["BIG", "harden", "usage_line", "walk"]

BIG = 1e9


Path_ = tuple[str, ...]


def walk(command: Any, path: Path_ = ("corral",)) -> Iterator[tuple[Path_, Any]]:
    """``(command path, click command)`` for the tree under ``command``, groups first."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _bounds(param: Any) -> tuple[float, float]:
    info = getattr(getattr(param, "type_descriptor", None), "parameter_info", None)
    low = getattr(info, "min", None)
    high = getattr(info, "max", None)
    return (0 if low is None else low), (BIG if high is None else high)


def _guarded(param: Any, inner: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def process_value(ctx: Any, value: Any) -> Any:
        for item in _items(value):
            if isinstance(item, str) and not item.strip():
                raise typer.BadParameter("must not be empty", ctx=ctx, param=param)
        out = inner(ctx, value)
        low, high = _bounds(param)
        for item in _items(out):
            if isinstance(item, bool) or not isinstance(item, int | float):
                continue
            if not math.isfinite(item):
                raise typer.BadParameter(f"{item} is not a finite number", ctx=ctx, param=param)
            if not low <= item <= high:
                raise typer.BadParameter(f"{item} is out of range ({low:g} to {high:g})",
                                         ctx=ctx, param=param)
        return out

    return process_value


def harden(root: Any) -> Any:
    """Install the module's rules on every parameter under ``root``; returns ``root``."""
    for _path, command in walk(root):
        for param in command.params:
            if not getattr(param, "_corral_guarded", False):
                param.process_value = _guarded(param, param.process_value)
                param._corral_guarded = True
    return root


def usage_line(err: Exception) -> str:
    """One line for a click/typer usage error: ``audit tail: Invalid value for '-n': ...``."""
    ctx = getattr(err, "ctx", None)
    path = ctx.command_path if ctx is not None else "corral"
    fmt = getattr(err, "format_message", None)
    message = fmt() if callable(fmt) else str(err)
    message = " ".join(str(message).split())  # choice lists come with newlines and tabs
    where = path.removeprefix("corral").strip()
    hint = f" (see '{path} --help')" if ctx is not None else ""
    return (f"{where}: " if where else "") + message + hint
