"""Load one policy file (or ``builtin:NAME``) into a validated, normalised ``LoadedPolicy``.

Invariants:
- Every error names the file, the line and the field, with a one-line hint, and all errors of
  a file are reported together (``PolicyError.problems``).
- A policy is trusted (may use ``env:``/``file:``/``cmd:`` secret sources, checked in
  ``corral.policy.convert``) only if its real path is inside ``corral.dirs.config_dir()``: a
  policy passed by path comes from a repo and must not make root read files or run commands.
  Built-ins and uploaded texts (``load_policy_text``) are not trusted either.
- Relative paths are resolved against the policy file's directory (none for a built-in or an
  uploaded text); the rules of that are in ``corral.policy.convert``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from corral import dirs
from corral.policy import convert, schema
from corral.policy.builtin import locate
from corral.policy.convert import Ctx
from corral.policy.errors import PolicyError
from corral.policy.types import BudgetEntry, CredentialBinding, Origin, Rule
from corral.policy.yamlsrc import Loc, parse_yaml

__all__ = ["LoadedPolicy", "load_policy", "load_policy_text"]

_HINTS = {
    "host": "e.g. 'api.example.com', '*.example.com', '*' or an IP address",
    "ports": "a list of port numbers, e.g. [443]",
    "action": "one of: direct, inspect, platform, deny",
    "methods": "a list like [GET, HEAD]",
    "paths": "a list of globs like ['/repos/**']",
    "allow_private": "true or false",
    "plaintext": "true or false",
    "name": "a name like 'my-team'",
    "mode": "one of: allow, allowlist, approve",
    "approval": "one of: none, writes, all",
    "type": "one of: header, aws",
    "memory": "a size like '4GiB' or 'none'",
    "pids": "a number like 1024 or 'none'",
    "cpu": "a number of CPUs like 2 or 'none'",
    "wall": "a duration like '2h' or 'none'",
    "idle": "a duration like '30m' or 'none'",
    "meter": "one of: anthropic, openai",
    "amount": "US dollars, e.g. 5 or 0.5",
    "period": "one of: run, day, week, month",
}


@dataclass(frozen=True)
class LoadedPolicy:
    name: str
    description: str
    source: str
    path: Path | None
    trusted: bool
    rules: tuple[Rule, ...]
    credentials: dict[str, CredentialBinding]
    # "limits.memory", "exec.mode", "files.approval", "files.workspace", "files.home" -> value
    settings: dict[str, tuple[Any, Origin]] = field(default_factory=dict)
    # "exec.allow", "files.read", "files.hide" -> items
    lists: dict[str, tuple[tuple[Any, Origin], ...]] = field(default_factory=dict)
    budgets: tuple[BudgetEntry, ...] = ()


def _model_at(loc: Loc) -> type[BaseModel] | None:
    table: dict[tuple[Any, ...], type[BaseModel]] = {
        (): schema.PolicyModel, ("egress", int): schema.EgressRule,
        ("credentials", str): schema.CredentialModel, ("exec",): schema.ExecModel,
        ("files",): schema.FilesModel, ("limits",): schema.LimitsModel,
        ("budgets", int): schema.BudgetModel,
    }
    shape = tuple(p if p in ("egress", "credentials", "exec", "files", "limits", "budgets")
                  else type(p) for p in loc)
    return table.get(shape)


def _report_validation(ctx: Ctx, err: ValidationError) -> None:
    seen: set[Loc] = set()
    for item in err.errors():
        loc: Loc = tuple(p for p in item["loc"] if p not in ("int", "str", "float", "list[int]"))
        if loc in seen:
            continue
        seen.add(loc)
        last = str(loc[-1]) if loc else ""
        kind = item["type"]
        if kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            known = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(last, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(known)}"
            ctx.error(loc, f"unknown key {last!r} ({hint})")
        elif kind == "missing":
            ctx.error(loc, f"missing required key {last!r} ({_HINTS.get(last, 'add it')})")
        elif kind == "value_error":
            ctx.error(loc, str(item["msg"]).removeprefix("Value error, "))
        else:
            got = type(item.get("input")).__name__.replace("NoneType", "empty value")
            hint = _HINTS.get(last, str(item["msg"]).lower())
            ctx.error(loc, f"wrong value ({got} {item.get('input')!r}): expected {hint}")


def _convert(ctx: Ctx, model: schema.PolicyModel, path: Path, trusted: bool,
             builtin: bool) -> LoadedPolicy:
    base = None if builtin else path.parent.absolute()
    creds = convert.credentials(ctx, model, trusted)
    rules = convert.rules(ctx, model, base)
    settings, lists = convert.settings(ctx, model, base)
    return LoadedPolicy(model.name, model.description, ctx.source, None if builtin else path,
                        trusted, tuple(rules), creds, settings, lists,
                        convert.budgets(ctx, model))


def is_trusted(path: Path) -> bool:
    real = os.path.realpath(path)
    root = os.path.realpath(dirs.config_dir())
    return os.path.commonpath([real, root]) == root


def load_policy(spec: str, text: str | None = None) -> LoadedPolicy:
    """Load and validate one policy; ``PolicyError`` lists every problem found in it."""
    source, path = locate(spec)
    try:
        text = path.read_text(encoding="utf-8") if text is None else text
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError([f"{source}: cannot read: {err}"]) from None
    trusted = not spec.startswith("builtin:") and is_trusted(path)
    return _load_text(source, path, text, trusted, spec.startswith("builtin:"))


def load_policy_text(source: str, text: str) -> LoadedPolicy:
    """A policy that is no file on this host (one uploaded to ``corral server``): never
    trusted, relative paths resolved against no host directory, errors naming ``source``."""
    return _load_text(source, Path(source), text, False, True)


def _load_text(source: str, path: Path, text: str, trusted: bool, builtin: bool) -> LoadedPolicy:
    try:
        data, lines = parse_yaml(text)
    except ValueError as err:
        line, where, message = str(err).split("|", 2)
        raise PolicyError([f"{source}:{line}: {where or '(document)'}: {message}"]) from None
    ctx = Ctx(source, lines)
    if data is None:
        ctx.error((), "the policy is empty; it needs at least 'name:' (and usually 'egress:'; "
                  "'corral policy init' writes a starter)")
        raise PolicyError(ctx.problems)
    if not isinstance(data, dict):
        ctx.error((), "a policy is a mapping with at least 'name:' (and usually 'egress:')")
        raise PolicyError(ctx.problems)
    try:
        model = schema.PolicyModel.model_validate(data)
    except ValidationError as err:
        _report_validation(ctx, err)
        raise PolicyError(ctx.problems) from None
    try:
        loaded = _convert(ctx, model, path, trusted, builtin)
    except ValueError as err:  # a unit re-parsed in _convert; validated already, kept safe
        ctx.error((), str(err))
    if ctx.problems:
        raise PolicyError(ctx.problems)
    return loaded
