"""``corral policy push`` / ``pull``: policy versions on corral server.

Invariants: a push sends the file's text and base name; the server validates it with corral's
own loader and answers a bad file with the loader's ``file:line: field: message``. ``pull``
writes what the server resolved, with each policy's version and digest in a comment.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from corral.cli import checks
from corral.cli.remote import SERVER_OPT, client, quote
from corral.errors import UserInputError

__all__ = ["register"]


def push(file: Path = typer.Argument(..., help="policy file", exists=True, dir_okay=False),
         project: str | None = typer.Option(None, "--project", help="attach to this project",
                                            callback=checks.resource_name),
         org: bool = typer.Option(False, "--org", help="org-mandatory: composed into every "
                                  "project"),
         server: str | None = SERVER_OPT) -> None:
    """Upload a policy as a new version of a project's (or the org's) policy."""
    if (project is None) == (not org):
        raise UserInputError("give exactly one of --project P or --org")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError(f"{file}: cannot read: {err}") from None
    path = "/org/policies" if org else f"/projects/{quote(project or '')}/policies"
    row = client(server).post(path, {"filename": file.name, "text": text})
    where = "org" if org else project
    print(f"pushed {row['name']} version {row['version']} to {where} (sha256 {row['digest']})")


def pull(project: str = typer.Option(..., "--project", help="project name",
                                     callback=checks.resource_name),
         output: Path | None = typer.Option(None, "-o", "--output", help="write here (default "
                                            "stdout)"),
         server: str | None = SERVER_OPT) -> None:
    """The project's resolved policy (org-mandatory and project policies) as YAML."""
    payload = client(server).get(f"/projects/{quote(project)}/policy")
    text = f"# corral policy pull --project {project}: digest {payload['digest']}\n" \
        + payload["yaml"]
    if output is None:
        print(text, end="")
        return
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, output)
    print(f"wrote {output}")


def register(app: typer.Typer) -> None:
    app.command("push")(push)
    app.command("pull")(pull)
