"""Spend on corral server: corral spend --project P [--by agent|model|day] [--json].

Invariant: every value is checked at parse time (``corral.cli.checks``).
"""

from __future__ import annotations

import typer

from corral.cli import checks
from corral.cli.remote import JSON_OPT, SERVER_OPT, client, quote, show

__all__ = ["app"]

app = typer.Typer(add_completion=False)


@app.callback(invoke_without_command=True)
def spend(project: str = typer.Option(..., "--project", help="the project",
                                      callback=checks.resource_name),
          by: str = typer.Option("day", "--by", help="group by agent, model or day (UTC)",
                                 callback=checks.choice("agent", "model", "day")),
          days: int = typer.Option(30, "--days", help="how many days back (1-3660)",
                                   min=1, max=3660),
          server: str | None = SERVER_OPT, as_json: bool = JSON_OPT) -> None:
    """A project's LLM spend (settled, and reserved for requests in flight)."""
    payload = client(server).get(f"/projects/{quote(project)}/spend?by={by}&days={days}")
    show(payload["rows"], [by, "cost_usd", "requests", "input_tokens", "output_tokens"],
         as_json, payload)
    if not as_json:
        print(f"total: {payload['total_usd']:.6f} USD since {payload['since'][:10]}")
