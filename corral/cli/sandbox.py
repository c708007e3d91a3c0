"""Inspect and clean up sandboxes: list live ones, collect leftovers of killed launchers."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from corral.cli.output import emit_json, plain
from corral.errors import CorralError
from corral.render import console

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show sandboxes in the registry: id, policies, uid, launcher pid, age, state."""
    from corral.sandbox import registry

    try:
        entries = registry.entries()
    except PermissionError:
        raise CorralError("the sandbox registry is readable by root only (try sudo)") from None
    table = Table("id", "policies", "uid", "pid", "age", "state")
    now = time.time()
    rows = []
    for e in entries:
        state = "running" if registry.launcher_alive(e) else "leftover"
        rows.append({"id": e.id, "policies": list(e.policies), "uid": e.uid, "pid": e.pid,
                     "created": e.created, "state": state})
        table.add_row(e.id, ", ".join(e.policies) or "(none)", str(e.uid), str(e.pid),
                      _age(now - e.created), state + (" (run gc)" if state == "leftover" else ""))
    if as_json:
        emit_json(rows)
        return
    console().print(plain(table))  # policy paths may hold "[...]": never markup


@app.command("gc")
def gc() -> None:
    """Remove what killed launchers left behind (registry entries, cgroups, directories)."""
    from corral.sandbox.reclaim import collect

    done = collect()
    for sid in done.removed:
        typer.echo(f"removed sandbox {sid}")
    if not done.removed:
        typer.echo("nothing to collect")
    if done.problems:
        raise CorralError("; ".join(done.problems))
