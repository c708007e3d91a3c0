"""Manage host-side secrets: set (from stdin), list (names and bindings, never values), rm."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from corral import dirs
from corral.cli import checks
from corral.cli.output import emit_json
from corral.credentials.store import CredentialStore, validate_name
from corral.errors import UserInputError

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("set")
def set_(name: str = typer.Argument(..., help="credential name", callback=validate_name),
         project: str | None = typer.Option(None, "--project", help="store it on corral "
                                            "server for this project (not on this host)",
                                            callback=checks.resource_name),
         release: bool = typer.Option(False, "--release", help="with --project: released to "
                                      "the run's proxy for inspect rules"),
         server: str | None = typer.Option(None, "--server", help="server URL (default: "
                                           "$CORRAL_SERVER)", callback=checks.server_url)
         ) -> None:
    """Read a secret from stdin into the root-only store (or, with --project, the server's)."""
    validate_name(name)
    if (release or server) and project is None:
        raise UserInputError("--release and --server go with --project")
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"secret for {name}: ")
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise UserInputError("no secret on stdin")
    if project is not None:
        from corral.cli.remote import client, quote

        client(server).put(f"/projects/{quote(project)}/credentials/{quote(name)}",
                           {"value": value, "release": release})
        print(f"stored {name} in project {project}" + (" (release)" if release else ""))
        return
    CredentialStore().set(name, value)
    print(f"stored {name}")


def _bindings() -> dict[str, list[str]]:
    """Store name -> ["policy-file:line (binding)"] for config-dir and built-in policies."""
    from corral.policy import resolve
    from corral.policy.builtin import builtin_names

    specs = [f"builtin:{n}" for n in builtin_names()]
    config = dirs.config_dir()
    if config.is_dir():
        specs += sorted(str(p) for p in Path(config).glob("*.y*ml"))
    found: dict[str, list[str]] = {}
    for spec in specs:
        try:
            rp = resolve([spec])
        except Exception:
            continue
        for binding in rp.credentials.values():
            sources = [binding.secret, binding.aws_access_key_id, binding.aws_secret_access_key,
                       binding.aws_session_token]
            for source in sources:
                if not source:
                    continue
                kind, sep, arg = source.partition(":")
                name = arg if sep and kind == "store" else (source if not sep else None)
                if name:
                    found.setdefault(name, []).append(f"{binding.origin} ({binding.name})")
    return found


@app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List stored secret names and the policies that bind them (never values)."""
    store = CredentialStore()
    names = store.names()
    bound = _bindings()
    rows: list[dict[str, Any]] = [
        {"name": name, "stored": name in names, "bound_by": bound.get(name, [])}
        for name in sorted(set(names) | set(bound))]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        where = ", ".join(row["bound_by"]) or "not bound by any config-dir or built-in policy"
        print(f"{row['name']}\t{'stored' if row['stored'] else 'MISSING'}\t{where}")


@app.command("rm")
def rm(name: str = typer.Argument(..., help="credential name", callback=validate_name)) -> None:
    """Remove a stored secret."""
    if not CredentialStore().remove(name):
        raise UserInputError(f"no stored secret {name!r}")
    print(f"removed {name}")
