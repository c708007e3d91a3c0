"""Turn a schema-valid ``PolicyModel`` into the pieces of a ``LoadedPolicy``, checking what the
schema cannot: fields that depend on each other, secret sources, names.

Invariants:
- Nothing here raises on a bad policy: every problem goes to ``Ctx.error`` with the file, line
  and field, so ``corral.policy.load`` reports all of a file's problems together.
- ``env:``/``file:``/``cmd:`` secret sources are accepted only from a trusted policy (its real
  path inside ``corral.dirs.config_dir()``, decided by the caller): a policy passed by path
  comes from a repo and must not make root read files or run commands.
- A ``server:`` secret is used only by a platform rule, and a platform rule uses nothing else.
- Relative ``files.workspace``/``home``/``read``/``hide`` and ``tls_ca`` are resolved against
  the policy file's directory (``base``); ``~`` is kept for the sandbox to expand for the
  invoking user; an inline PEM ``tls_ca`` is kept verbatim.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from corral import dirs
from corral.policy import schema
from corral.policy.types import BudgetEntry, CredentialBinding, Origin, Rule
from corral.policy.units import parse_duration, parse_size
from corral.policy.yamlsrc import Loc, format_loc

__all__ = ["Ctx", "budgets", "credentials", "rules", "settings"]

DEFAULT_PORTS = frozenset({80, 443})

Settings = dict[str, tuple[Any, Origin]]
Lists = dict[str, tuple[tuple[Any, Origin], ...]]


class Ctx:
    """One file's source name, the line of every YAML location, and the problems found."""

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


def _secret_source(ctx: Ctx, loc: Loc, spec: str, trusted: bool) -> str:
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


def _check_credential(ctx: Ctx, loc: Loc, name: str, cred: schema.CredentialModel) -> None:
    """The keys of one binding that its ``type`` needs or refuses."""
    if not schema._NAME.fullmatch(name):
        ctx.error(loc, "credential names use lower-case letters, digits and '-'")
    if cred.type == "aws":
        for key in ("secret", "header", "format"):
            if getattr(cred, key) is not None:
                ctx.error((*loc, key), f"{key!r} does not apply to type: aws (SigV4 re-signs)")
        for key in ("access_key_id", "secret_access_key"):
            if getattr(cred, key) is None:
                ctx.error(loc, f"type: aws needs {key!r}")
        return
    for key in ("access_key_id", "secret_access_key", "session_token"):
        if getattr(cred, key) is not None:
            ctx.error((*loc, key), f"{key!r} only applies to type: aws")
    if cred.secret is None:
        ctx.error(loc, "missing required key 'secret' (e.g. store:NAME)")


def credentials(ctx: Ctx, model: schema.PolicyModel,
                trusted: bool) -> dict[str, CredentialBinding]:
    creds: dict[str, CredentialBinding] = {}
    for cname, cred in model.credentials.items():
        loc: Loc = ("credentials", cname)
        _check_credential(ctx, loc, cname, cred)

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
    return creds


def _check_egress(ctx: Ctx, loc: Loc, rule: schema.EgressRule,
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
    if rule.action not in ("inspect", "platform") and rule.meter is not None:
        ctx.error((*loc, "meter"), "'meter' needs action: inspect or platform")
    if rule.action == "platform" and rule.allow_private:
        ctx.error((*loc, "allow_private"), "does not apply to action: platform (the "
                  "server's relay opens private ranges only by its own relay.allow_private)")
    if rule.credential is not None and rule.credential not in model.credentials:
        ctx.error((*loc, "credential"), f"no credential {rule.credential!r} in this file "
                  "(define it under 'credentials:')")
    elif rule.credential is not None:
        _check_platform_binding(ctx, (*loc, "credential"), rule.action,
                                model.credentials[rule.credential])


def _check_platform_binding(ctx: Ctx, loc: Loc, action: str,
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


def rules(ctx: Ctx, model: schema.PolicyModel, base: Path | None) -> list[Rule]:
    out: list[Rule] = []
    for index, rule in enumerate(model.egress):
        loc: Loc = ("egress", index)
        _check_egress(ctx, loc, rule, model)
        out.append(Rule(
            host=rule.host, ports=frozenset(rule.ports) if rule.ports else DEFAULT_PORTS,
            action=rule.action, origin=ctx.origin(loc), policy=model.name,
            methods=frozenset(rule.methods) if rule.methods else None,
            paths=tuple(rule.paths) if rule.paths else None, credential=rule.credential,
            tls_ca=_ca(base, rule.tls_ca) if rule.tls_ca else None,
            allow_private=rule.allow_private, reason=rule.reason, meter=rule.meter,
        ))
    return out


def _limit(key: str, raw: Any) -> Any:
    """A limit's value as ``Limits`` holds it; None is unlimited."""
    if key == "memory":
        return parse_size(raw)
    if key in ("wall", "idle"):
        return parse_duration(raw)
    if raw == "none":
        return None
    return float(raw) if key == "cpu" else raw


def _limits(ctx: Ctx, limits: schema.LimitsModel, out: Settings) -> None:
    for key in ("memory", "pids", "cpu", "wall", "idle"):
        raw = getattr(limits, key)
        if raw is not None:
            out[f"limits.{key}"] = (_limit(key, raw), ctx.origin(("limits", key)))


def _exec(ctx: Ctx, exec_: schema.ExecModel, out: Settings, lists: Lists) -> None:
    if exec_.mode is not None:
        out["exec.mode"] = (exec_.mode, ctx.origin(("exec", "mode")))
    lists["exec.allow"] = tuple(
        (item, ctx.origin(("exec", "allow", i))) for i, item in enumerate(exec_.allow))
    for i, item in enumerate(exec_.allow):
        if not item.strip():
            ctx.error(("exec", "allow", i), "empty command pattern")


def _files(ctx: Ctx, f: schema.FilesModel, base: Path | None, out: Settings,
           lists: Lists) -> None:
    if f.approval is not None:
        out["files.approval"] = (f.approval, ctx.origin(("files", "approval")))
    for key in ("workspace", "home"):
        raw = getattr(f, key)
        if raw is not None:
            out[f"files.{key}"] = (_rel(base, raw), ctx.origin(("files", key)))
    for key in ("read", "hide"):
        lists[f"files.{key}"] = tuple((_rel(base, item), ctx.origin(("files", key, i)))
                                      for i, item in enumerate(getattr(f, key)))


def settings(ctx: Ctx, model: schema.PolicyModel, base: Path | None) -> tuple[Settings, Lists]:
    """``limits``, ``exec`` and ``files``: single values (``settings``) and lists, each item
    with its origin."""
    out: Settings = {}
    lists: Lists = {}
    if model.limits is not None:
        _limits(ctx, model.limits, out)
    if model.exec is not None:
        _exec(ctx, model.exec, out, lists)
    if model.files is not None:
        _files(ctx, model.files, base, out, lists)
    return out, lists


def budgets(ctx: Ctx, model: schema.PolicyModel) -> tuple[BudgetEntry, ...]:
    return tuple(BudgetEntry(float(b.amount), b.period, ctx.origin(("budgets", i)), model.name)
                 for i, b in enumerate(model.budgets))


def _ca(base: Path | None, value: str) -> Path | str:
    """A ``tls_ca``: inline PEM (a server's policy) stays text, verbatim (as a Path its base64
    would lose every '//'); anything else is a file path like the others."""
    return value if value.lstrip().startswith("-----BEGIN") else _rel(base, value)


def _rel(base: Path | None, value: str) -> Path:
    if value.startswith("~") or base is None:
        return Path(value)
    return Path(os.path.normpath(base / value))
