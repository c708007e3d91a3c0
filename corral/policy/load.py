"""Load one policy file (or ``builtin:NAME``) into a validated, normalised ``LoadedPolicy``.

Invariants:
- Every error names the file, the line and the field, with a one-line hint, and all errors of
  a file are reported together (``PolicyError.problems``).
- ``env:``/``file:``/``cmd:`` secret sources are accepted only from a policy whose real path
  is inside ``corral.dirs.config_dir()``: a policy passed by path comes from a repo and must
  not make root read files or run commands. Built-ins are not trusted either.
- Relative ``files.workspace``/``read``/``hide`` and ``tls_ca`` are resolved against the
  policy file's directory; ``~`` is kept for the sandbox to expand for the invoking user.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from corral import dirs
from corral.policy import schema
from corral.policy.builtin import locate
from corral.policy.errors import PolicyError
from corral.policy.types import BudgetEntry, CredentialBinding, Origin, Rule
from corral.policy.units import parse_duration, parse_size
from corral.policy.yamlsrc import Loc, format_loc, parse_yaml

__all__ = ["LoadedPolicy", "load_policy", "load_policy_text"]

DEFAULT_PORTS = frozenset({80, 443})
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


class _Ctx:
    def __init__(self, source: str, lines: dict[Loc, int]) -> None:
        self.source, self.lines, self.problems = source, lines, list[str]()

    def line(self, loc: Loc) -> int:
        while loc not in self.lines:
            loc = loc[:-1]
        return self.lines[loc]

    def origin(self, loc: Loc) -> Origin:
        return Origin(self.source, self.line(loc))

    def error(self, loc: Loc, message: str) -> None:
        self.problems.append(f"{self.source}:{self.line(loc)}: {format_loc(loc)}: {message}")


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


def _report_validation(ctx: _Ctx, err: ValidationError) -> None:
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


def _secret_source(ctx: _Ctx, loc: Loc, spec: str, trusted: bool) -> str:
    scheme, sep, rest = spec.partition(":")
    if not sep:
        scheme, rest = "store", spec
    if scheme not in ("store", "env", "file", "cmd", "server") or not rest:
        ctx.error(loc, f"bad secret source {spec!r} (use store:NAME, env:VAR, file:PATH, cmd:CMD "
                  "or server:NAME)")
    elif scheme == "server" and not schema._NAME.fullmatch(rest):
        ctx.error(loc, f"bad server credential name {rest!r} (lower-case letters, digits, '-')")
    elif scheme not in ("store", "server") and not trusted:
        ctx.error(loc, f"{scheme}: secret sources are only allowed in policies inside the config "
                  f"dir {dirs.config_dir()}; use store:NAME and 'corral creds set NAME'")
    return f"{scheme}:{rest}"


def _check_egress(ctx: _Ctx, loc: Loc, rule: schema.EgressRule,
                  model: schema.PolicyModel) -> None:
    """Cross-field rules of one egress rule (the schema checks each field alone)."""
    if rule.action == "direct":
        for key in ("methods", "paths"):
            if getattr(rule, key) is not None:
                ctx.error((*loc, key), f"{key!r} needs action: inspect or deny (or "
                          "platform; a direct tunnel cannot see requests)")
    if rule.action not in ("inspect", "platform"):
        for key in ("credential", "tls_ca"):
            if getattr(rule, key) is not None:
                ctx.error((*loc, key), f"{key!r} needs action: inspect or platform")
    if rule.action != "inspect" and rule.meter is not None:
        ctx.error((*loc, "meter"), "'meter' needs action: inspect")
    if rule.action == "platform" and rule.allow_private:
        ctx.error((*loc, "allow_private"), "does not apply to action: platform (the "
                  "server's relay opens private ranges only by its own relay.allow_private)")
    if rule.credential is not None and rule.credential not in model.credentials:
        ctx.error((*loc, "credential"), f"no credential {rule.credential!r} in this file "
                  "(define it under 'credentials:')")
    elif rule.credential is not None:
        _check_platform_binding(ctx, (*loc, "credential"), rule.action,
                                model.credentials[rule.credential])


def _check_platform_binding(ctx: _Ctx, loc: Loc, action: str,
                            cred: schema.CredentialModel) -> None:
    """A ``server:`` secret never leaves the server: only a platform rule (injected by the
    server's relay) may use it, and a platform rule may use nothing else."""
    on_server = cred.type == "header" and (cred.secret or "").startswith("server:")
    if action == "platform" and not on_server:
        ctx.error(loc, "a platform rule's credential is injected by corral server: give it "
                  "type: header and 'secret: server:NAME'")
    elif action != "platform" and on_server:
        ctx.error(loc, "a 'server:' secret is injected only by corral server's relay: use "
                  "action: platform on this rule")


def _rel(base: Path | None, value: str) -> Path:
    if value.lstrip().startswith("-----BEGIN"):
        # An inline PEM (a server's policy): kept verbatim. A Path would fold the '//' that
        # base64 text may hold, and the certificate would no longer parse.
        return _VerbatimPem(value)
    if value.startswith("~") or base is None:
        return Path(value)
    return Path(os.path.normpath(base / value))


class _VerbatimPem(type(Path())):  # type: ignore[misc]
    """A ``tls_ca`` given as inline PEM, typed as the path it stands in for; ``str`` gives the
    text exactly as written."""

    def __new__(cls, text: str) -> _VerbatimPem:
        self: _VerbatimPem = super().__new__(cls, "inline-pem")
        self._pem = text
        return self

    def __str__(self) -> str:
        return str(self._pem)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_VerbatimPem, (self._pem,))


def _convert(ctx: _Ctx, model: schema.PolicyModel, path: Path, trusted: bool,
             builtin: bool) -> LoadedPolicy:
    base = None if builtin else path.parent.absolute()
    creds: dict[str, CredentialBinding] = {}
    for cname, cred in model.credentials.items():
        loc: Loc = ("credentials", cname)
        if not schema._NAME.fullmatch(cname):
            ctx.error(loc, "credential names use lower-case letters, digits and '-'")
        if cred.type == "aws":
            for key in ("secret", "header", "format"):
                if getattr(cred, key) is not None:
                    ctx.error((*loc, key), f"{key!r} does not apply to type: aws (SigV4 re-signs)")
            for key in ("access_key_id", "secret_access_key"):
                if getattr(cred, key) is None:
                    ctx.error(loc, f"type: aws needs {key!r}")
        else:
            for key in ("access_key_id", "secret_access_key", "session_token"):
                if getattr(cred, key) is not None:
                    ctx.error((*loc, key), f"{key!r} only applies to type: aws")
            if cred.secret is None:
                ctx.error(loc, "missing required key 'secret' (e.g. store:NAME)")

        def src(key: str, value: str | None, loc: Loc = loc) -> str | None:
            return None if value is None else _secret_source(ctx, (*loc, key), value, trusted)

        creds[cname] = CredentialBinding(
            name=cname, origin=ctx.origin(loc), kind=cred.type,
            secret=src("secret", cred.secret), header=cred.header or "Authorization",
            format=cred.format or "Bearer {secret}", env=cred.env, plaintext=cred.plaintext,
            aws_access_key_id=src("access_key_id", cred.access_key_id),
            aws_secret_access_key=src("secret_access_key", cred.secret_access_key),
            aws_session_token=src("session_token", cred.session_token), trusted_source=trusted,
        )
    rules: list[Rule] = []
    for index, rule in enumerate(model.egress):
        loc = ("egress", index)
        _check_egress(ctx, loc, rule, model)
        rules.append(Rule(
            host=rule.host, ports=frozenset(rule.ports) if rule.ports else DEFAULT_PORTS,
            action=rule.action, origin=ctx.origin(loc), policy=model.name,
            methods=frozenset(rule.methods) if rule.methods else None,
            paths=tuple(rule.paths) if rule.paths else None, credential=rule.credential,
            tls_ca=_rel(base, rule.tls_ca) if rule.tls_ca else None,
            allow_private=rule.allow_private, reason=rule.reason, meter=rule.meter,
        ))
    settings: dict[str, tuple[Any, Origin]] = {}
    lists: dict[str, tuple[tuple[Any, Origin], ...]] = {}
    if model.limits is not None:
        for key in ("memory", "pids", "cpu", "wall", "idle"):
            raw = getattr(model.limits, key)
            if raw is None:
                continue
            value: Any
            if key == "memory":
                value = parse_size(raw)
            elif key in ("wall", "idle"):
                value = parse_duration(raw)
            elif raw == "none":
                value = None
            else:
                value = float(raw) if key == "cpu" else raw
            settings[f"limits.{key}"] = (value, ctx.origin(("limits", key)))
    if model.exec is not None:
        if model.exec.mode is not None:
            settings["exec.mode"] = (model.exec.mode, ctx.origin(("exec", "mode")))
        lists["exec.allow"] = tuple(
            (item, ctx.origin(("exec", "allow", i))) for i, item in enumerate(model.exec.allow))
        for i, item in enumerate(model.exec.allow):
            if not item.strip():
                ctx.error(("exec", "allow", i), "empty command pattern")
    if model.files is not None:
        f = model.files
        if f.approval is not None:
            settings["files.approval"] = (f.approval, ctx.origin(("files", "approval")))
        for key in ("workspace", "home"):
            raw = getattr(f, key)
            if raw is not None:
                settings[f"files.{key}"] = (_rel(base, raw), ctx.origin(("files", key)))
        for key in ("read", "hide"):
            lists[f"files.{key}"] = tuple((_rel(base, item), ctx.origin(("files", key, i)))
                                          for i, item in enumerate(getattr(f, key)))
    budgets = tuple(BudgetEntry(float(b.amount), b.period, ctx.origin(("budgets", i)), model.name)
                    for i, b in enumerate(model.budgets))
    return LoadedPolicy(model.name, model.description, ctx.source, None if builtin else path,
                        trusted, tuple(rules),
                        creds, settings, lists, budgets)


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
    ctx = _Ctx(source, lines)
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
