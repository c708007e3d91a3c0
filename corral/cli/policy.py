"""Check, resolve and explain policies; list the built-in ones.

Every problem is printed as one line naming file:line and the field, and the command exits 2;
no traceback reaches the user.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.table import Table

from corral.cli import checks
from corral.cli.output import emit_json, plain
from corral.errors import UserInputError
from corral.policy import PolicyError, ResolvedPolicy, describe_builtins, resolve
from corral.render import console

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
# No markup, emoji or control characters: policy text (reasons, origins in brackets) prints
# verbatim (corral.render). Wide when piped.
_out = console(width=None if sys.stdout.isatty() else 160)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
PolicyOpt = Annotated[
    list[str] | None,
    typer.Option("-p", "--policy", help="A policy file or builtin:NAME; repeat to compose."),
]


def _fail(err: PolicyError) -> typer.Exit:
    for problem in err.problems:
        print(f"corral: {problem}", file=sys.stderr)
    return typer.Exit(2)


def _resolve(policies: list[str] | None, quick: Any = None) -> ResolvedPolicy:
    try:
        return resolve(policies or [], quick=quick)
    except PolicyError as err:
        raise _fail(err) from None


def _opt(name: str, metavar: str, text: str) -> Any:
    return typer.Option(name, metavar=metavar, help=f"{text} (as on corral run).")


AllowOpt = Annotated[list[str] | None, _opt("--allow", "HOST[:PORT]", "An inspect rule")]
RoOpt = Annotated[list[str] | None, _opt("--ro", "PATH", "A read-only path")]
RwOpt = Annotated[list[str] | None, _opt("--rw", "DIR", "A writable directory")]
MemoryOpt = Annotated[str | None, _opt("--memory", "SIZE", "limits.memory")]
TimeoutOpt = Annotated[str | None, _opt("--timeout", "DURATION", "limits.wall")]
IdleOpt = Annotated[str | None, _opt("--idle", "DURATION", "limits.idle")]


@app.command("check")
def check(
    files: Annotated[list[str], typer.Argument(help="Policy files or builtin:NAME.")],
    as_json: JsonOpt = False,
) -> None:
    """Validate policy files: exit 0, or 2 listing every problem with file:line."""
    from corral.policy.load import load_policy

    problems: list[str] = []
    report: list[dict[str, Any]] = []
    for spec in files:
        try:
            loaded = load_policy(spec)
        except PolicyError as err:
            problems += err.problems
            report.append({"source": spec, "ok": False, "problems": err.problems})
            continue
        report.append({"source": spec, "ok": True, "name": loaded.name,
                       "rules": len(loaded.rules)})
        if not as_json:
            _out.print(f"{spec}: ok (policy {loaded.name}, {len(loaded.rules)} rules)")
    if as_json:
        emit_json(report)
        if problems:
            raise typer.Exit(2)
    if problems:
        raise _fail(PolicyError(problems))


def _describe(rp: ResolvedPolicy) -> dict[str, Any]:
    data = rp.canonical()
    prov = rp.provenance

    def origins(key: str) -> list[str]:
        return [str(o) for o in prov.get(key, ())] or ["default"]

    for rule, origin in zip(data["rules"], rp.rules, strict=True):
        rule["origin"] = str(origin.origin)
    for name, binding in data["credentials"].items():
        binding["origin"] = str(rp.credentials[name].origin)
    data["origins"] = {
        **{f"limits.{k}": origins(f"limits.{k}")[0] for k in data["limits"]},
        "exec.mode": origins("exec.mode")[0],
        "files.approval": origins("files.approval")[0],
        "files.workspace": origins("files.workspace")[0],
        "files.home": origins("files.home")[0],
        "exec.allow": origins("exec.allow") if rp.exec.allow else [],
        "files.read": origins("files.read") if rp.files.read else [],
        "files.write": origins("files.write") if rp.files.write else [],
        "files.hide": origins("files.hide") if rp.files.hide else [],
    }
    data["sources"] = list(rp.sources)
    data["digest"] = rp.digest
    return data


@app.command("resolve")
def resolve_cmd(
    policy: PolicyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    allow: AllowOpt = None, ro: RoOpt = None, rw: RwOpt = None, memory: MemoryOpt = None,
    timeout: TimeoutOpt = None, idle: IdleOpt = None,
) -> None:
    """Show the composed policy and where every rule and value came from (conflicts: exit 2).
    The quick flags of corral run compose as they do there, each naming itself as origin."""
    from corral.policy.quick import QuickFlags, quick_policy

    flags = QuickFlags(tuple(allow or ()), tuple(ro or ()), tuple(rw or ()), memory, timeout, idle)
    try:
        quick = quick_policy(flags) if flags.given() else None
    except PolicyError as err:
        raise _fail(err) from None
    rp = _resolve(policy, quick)
    data = _describe(rp)
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    _out.print(f"policies: {', '.join(rp.names) or '(none: default deny)'}  digest {rp.digest}")
    table = Table("origin", "host", "ports", "action", "methods", "paths", "credential")
    for rule in rp.rules:
        table.add_row(str(rule.origin), rule.host, ",".join(map(str, sorted(rule.ports))),
                      rule.action, ",".join(sorted(rule.methods or ())) or "any",
                      " ".join(rule.paths or ()) or "any", rule.credential or "")
    _out.print(plain(table))
    for name, binding in rp.credentials.items():
        _out.print(f"credential {name}: {binding.secret or 'aws'} -> {binding.header} "
                   f"(env {binding.env or '-'})  [{binding.origin}]")
    origins = data["origins"]
    for section in ("limits", "exec", "files"):
        for key, value in data[section].items():
            where = origins.get(f"{section}.{key}", "")
            if isinstance(where, list):
                where = ", ".join(where)
            _out.print(f"{section}.{key} = {value!r}  [{where or 'default'}]")


@app.command("explain")
def explain(
    url: Annotated[str, typer.Argument(help="The request, e.g. https://api.example.com/x")],
    policy: PolicyOpt = None,
    method: Annotated[str, typer.Option("--method", "-X", help="HTTP method.",
                                        callback=checks.http_method)] = "GET",
    as_json: JsonOpt = False,
) -> None:
    """The decision for one request, and the rule that made it (or "default deny")."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        raise UserInputError(f"{url}: not a valid URL ({err})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(
            c.isspace() for c in url):
        raise UserInputError(f"{url}: give a full http:// or https:// URL")
    rp = _resolve(policy)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    out: dict[str, Any] = {"url": url, "method": method.upper()}
    lines: list[str] = []
    if parts.scheme == "https":
        conn = rp.decide_connect(parts.hostname, port)
        out["connect"] = {"action": conn.action, "origin": str(conn.origin),
                          "message": conn.message}
        lines.append(f"connect {parts.hostname}:{port}: {conn.action}  ({conn.origin})")
        if conn.action not in ("inspect", "platform"):
            lines.append(conn.message)
    if parts.scheme == "http" or out["connect"]["action"] in ("inspect", "platform"):
        decision = rp.decide_request(parts.hostname, port, method, target)
        out["request"] = {"action": decision.action, "origin": str(decision.origin),
                          "message": decision.message}
        lines += [f"{method.upper()} {url}: {decision.action}  ({decision.origin})",
                  decision.message]
        binding = rp.credentials_for(decision)
        if binding is not None:
            out["request"]["credential"] = {"name": binding.name, "header": binding.header}
            lines.append(f"injects credential {binding.name} into {binding.header}")
        elif decision.action == "platform":
            relayed = rp.credentials.get(decision.credential or "")
            out["request"]["relay"] = "corral server"
            lines.append("relayed through corral server" + (
                f", which injects {relayed.secret} into {relayed.header}" if relayed else ""))
    if as_json:
        emit_json(out)
        return
    for line in lines:
        _out.print(line)


@app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """The built-in policies (use them as -p builtin:NAME)."""
    builtins = describe_builtins()
    if as_json:
        emit_json([{"name": f"builtin:{n}", "description": d} for n, d in builtins])
        return
    table = Table("name", "description")
    for name, description in builtins:
        table.add_row(f"builtin:{name}", description)
    _out.print(plain(table))


@app.command("init")
def init(
    path: Annotated[str, typer.Argument(help="File to write ('-': stdout).")] = "policy.yaml",
    source: Annotated[str | None, typer.Option(
        "--from", metavar="builtin:NAME", help="Start from a built-in policy instead.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter policy (it passes `corral policy check`)."""
    from corral.cli.starter import write_starter

    said = write_starter(path, source, force=force)
    if said:
        print(said, file=sys.stderr)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(metavar="builtin:NAME", help="A built-in policy.")],
) -> None:
    """Print a built-in policy's YAML, as shipped."""
    from corral.cli.starter import builtin_text

    sys.stdout.write(builtin_text(name))


# push/pull talk to corral server; they live in their own module (imported lazily there).
from corral.cli.policy_remote import register as _register_remote  # noqa: E402

_register_remote(app)
