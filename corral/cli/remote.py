"""Shared by the commands that talk to ``corral server``: the client and plain listings.

Invariants: the server URL comes from ``--server`` or ``CORRAL_SERVER`` and the token from
``CORRAL_TOKEN`` or else the stored login of ``corral login`` (never a command-line flag: it
would show in ``ps``); listings print
``visible`` text (names come from other users) or, with ``--json``, the server's JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import typer

from corral.cli import checks
from corral.errors import UserInputError
from corral.render import visible

if TYPE_CHECKING:
    from corral.client import Client

__all__ = ["JSON_OPT", "SERVER_OPT", "client", "quote", "show"]

SERVER_OPT = typer.Option(None, "--server", help="server URL (default: $CORRAL_SERVER)",
                          callback=checks.server_url)
JSON_OPT = typer.Option(False, "--json", help="print JSON")


def client(server: str | None) -> Client:
    from corral.client import Client

    url = server or os.environ.get("CORRAL_SERVER")
    token = os.environ.get("CORRAL_TOKEN")
    if not token:
        from corral.cli.login import load

        # The stored login (corral login), for the server it was made for.
        stored = load()
        if stored is not None and (url is None or url.rstrip("/") ==
                                   str(stored.get("server", "")).rstrip("/")):
            url, token = url or str(stored["server"]), str(stored["token"])
    if not url:
        raise UserInputError("no server: pass --server URL or set CORRAL_SERVER")
    if not token:
        raise UserInputError("no token: run 'corral login --server URL' or set CORRAL_TOKEN "
                             "(see 'corral server token create')")
    return Client(url, token)


def quote(segment: str) -> str:
    import urllib.parse

    return urllib.parse.quote(segment, safe="")


def show(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool,
         payload: Any) -> None:
    if as_json:
        print(json.dumps(payload, indent=2, sort_keys=True))
        return
    table = [[c.upper() for c in columns]]
    table += [[visible("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
