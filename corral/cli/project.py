"""Projects on corral server: create, list."""

from __future__ import annotations

import typer

from corral.cli import checks
from corral.cli.remote import JSON_OPT, SERVER_OPT, client, quote, show

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("create")
def create(name: str = typer.Argument(..., help="project name", callback=checks.resource_name),
           team: str = typer.Option(..., "--team", help="the team that owns it",
                                    callback=checks.resource_name),
           require_server: bool = typer.Option(
               False, "--require-server", help="runs refuse to start without the server"),
           server: str | None = SERVER_OPT) -> None:
    """Create a project in a team."""
    client(server).post(f"/teams/{quote(team)}/projects",
                        {"name": name, "require_server": require_server})
    print(f"created project {name} in {team}")


@app.command("list")
def list_(server: str | None = SERVER_OPT, as_json: bool = JSON_OPT) -> None:
    """The projects you can see."""
    payload = client(server).get("/projects")
    show(payload["projects"], ["name", "team", "require_server"], as_json, payload)
