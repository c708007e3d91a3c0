"""Your own tokens on corral server: list and revoke (through the API)."""

from __future__ import annotations

import typer

from corral.cli.remote import JSON_OPT, SERVER_OPT, client, show

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("list")
def list_(server: str | None = SERVER_OPT, as_json: bool = JSON_OPT) -> None:
    """Your tokens (logins and step-ups), the one in use marked current."""
    payload = client(server).get("/tokens")
    show(payload["tokens"], ["id", "name", "step_up", "expires_at", "last_used_at", "revoked",
                             "current"], as_json, payload)


@app.command("revoke")
def revoke(token_id: int = typer.Argument(..., min=1, help="the token's id (token list)"),
           server: str | None = SERVER_OPT) -> None:
    """Revoke one of your tokens."""
    done = client(server).request("DELETE", f"/tokens/{token_id}")
    if not done.get("revoked"):
        raise typer.Exit(_none(token_id))
    print(f"revoked token {token_id}")


def _none(token_id: int) -> int:
    import sys

    print(f"corral: no live token {token_id} of yours", file=sys.stderr)
    return 1
