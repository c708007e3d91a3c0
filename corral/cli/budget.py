"""Budgets on corral server: set one on the org, a team, a project, an agent or a run; list them.

Invariants: every value is checked at parse time (``corral.cli.checks``); exactly one scope is
named; a set is an admin change on the server (team or org admin, with a step-up login).
"""

from __future__ import annotations

import typer

from corral.cli import checks
from corral.cli.remote import JSON_OPT, SERVER_OPT, client, quote, show
from corral.errors import UserInputError

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("set")
def set_(amount: float = typer.Option(..., "--amount", help="USD per period (0 blocks all)",
                                      callback=checks.usd),
         period: str = typer.Option(..., "--period", help="run, day, week or month (UTC)",
                                    callback=checks.choice("run", "day", "week", "month")),
         org: bool = typer.Option(False, "--org", help="the whole organisation's budget"),
         team: str | None = typer.Option(None, "--team", help="a team's budget",
                                         callback=checks.resource_name),
         project: str | None = typer.Option(None, "--project", help="a project's budget",
                                            callback=checks.resource_name),
         agent: str | None = typer.Option(None, "--agent",
                                          help="an agent's budget (with --project)",
                                          callback=checks.agent_name),
         run: str | None = typer.Option(None, "--run", help="one run's budget (its server id)",
                                        callback=checks.sandbox_id),
         server: str | None = SERVER_OPT) -> None:
    """Set (or replace) a budget: corral budget set --project P --amount 50 --period month."""
    named = [n for n, v in (("--org", org), ("--team", team), ("--project", project),
                            ("--run", run)) if v]
    if len(named) != 1:
        raise UserInputError("name exactly one of --org, --team T, --project P, --run ID "
                             "(--project P --agent A for an agent)")
    if agent is not None and project is None:
        raise UserInputError("--agent: agents are named within a project; add --project P")
    body: dict[str, object] = {"amount_usd": amount, "period": period}
    if org:
        path, what = "/budgets/org", "org"
    elif team is not None:
        path, what = f"/teams/{quote(team)}/budgets", f"team {team}"
    elif run is not None:
        path, what = f"/runs/{quote(run)}/budgets", f"run {run}"
    else:
        assert project is not None
        path, what = f"/projects/{quote(project)}/budgets", f"project {project}"
        if agent is not None:
            body["agent"], what = agent, f"agent {project}/{agent}"
    client(server).put(path, body)
    print(f"budget set: {what} {amount:.2f} USD per {period}")


@app.command("list")
def list_(server: str | None = SERVER_OPT, as_json: bool = JSON_OPT) -> None:
    """The budgets you can see, with what their current window has spent."""
    payload = client(server).get("/budgets")
    show(payload["budgets"], ["scope", "target", "period", "amount_usd", "spent_usd",
                              "reserved_usd"], as_json, payload)
