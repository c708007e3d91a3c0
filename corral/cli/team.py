"""Teams on corral server: create, list, add-member."""

from __future__ import annotations

import typer

from corral.cli import checks
from corral.cli.remote import JSON_OPT, SERVER_OPT, client, quote, show

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("create")
def create(name: str = typer.Argument(..., help="team name", callback=checks.resource_name),
           server: str | None = SERVER_OPT) -> None:
    """Create a team (org admins)."""
    client(server).post("/teams", {"name": name})
    print(f"created team {name}")


@app.command("list")
def list_(server: str | None = SERVER_OPT, as_json: bool = JSON_OPT) -> None:
    """The teams you can see."""
    payload = client(server).get("/teams")
    show(payload["teams"], ["name", "created_at"], as_json, payload)


@app.command("add-member")
def add_member(team: str = typer.Argument(..., help="team name", callback=checks.resource_name),
               email: str = typer.Argument(..., help="the user's email", callback=checks.email),
               role: str = typer.Option(..., "--role", help="owner, admin, member or viewer",
                                        callback=checks.role),
               server: str | None = SERVER_OPT) -> None:
    """Add a user to a team, or change their role."""
    client(server).put(f"/teams/{quote(team)}/members/{quote(email)}", {"role": role})
    print(f"{email} is {role} in {team}")
