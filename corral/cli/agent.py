"""Agent identities of a project on corral server: create, list."""

from __future__ import annotations

import typer

from corral.cli import checks
from corral.cli.remote import JSON_OPT, SERVER_OPT, client, quote, show

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)
PROJECT = typer.Option(..., "--project", help="project name", callback=checks.resource_name)


@app.command("create")
def create(name: str = typer.Argument(..., help="agent name, e.g. release-bot or alice/claude",
                                      callback=checks.agent_name),
           project: str = PROJECT, server: str | None = SERVER_OPT) -> None:
    """Create an agent identity in a project."""
    client(server).post(f"/projects/{quote(project)}/agents", {"name": name})
    print(f"created agent {name} in {project}")


@app.command("list")
def list_(project: str = PROJECT, server: str | None = SERVER_OPT,
          as_json: bool = JSON_OPT) -> None:
    """A project's agents."""
    payload = client(server).get(f"/projects/{quote(project)}/agents")
    show(payload["agents"], ["name", "project", "created_at"], as_json, payload)
