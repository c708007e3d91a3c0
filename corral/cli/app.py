"""The typer command tree. Each command group lives in its own module under ``corral.cli``."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import typer

from corral.errors import CorralError

__all__ = ["app", "main"]

# Group name -> module exposing ``app: typer.Typer``. A group is wired in once its module exists,
# so the tree grows as features land without a central edit per command.
GROUPS = ("policy", "creds", "audit", "sandbox", "mcp", "approvals")

app = typer.Typer(
    name="corral",
    help="Run AI agents in governed Linux sandboxes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Run a command inside a sandbox: corral run [-p POLICY]... -- CMD [ARGS...]",
)
def _run(ctx: typer.Context) -> None:
    from corral.cli.run import run_main

    raise typer.Exit(run_main(list(ctx.args)))


for _name in GROUPS:
    _module_name = f"corral.cli.{_name}"
    if importlib.util.find_spec(_module_name) is not None:
        _module = importlib.import_module(_module_name)
        app.add_typer(_module.app, name=_name, help=(_module.__doc__ or "").strip().split("\n")[0])


def main(argv: list[str]) -> int:
    try:
        result = app(args=argv, prog_name="corral", standalone_mode=False)
    except CorralError as err:
        print(f"corral: {err}", file=sys.stderr)
        return err.exit_code
    except typer.Exit as done:
        return int(done.exit_code or 0)
    except typer.Abort:
        print("corral: aborted", file=sys.stderr)
        return 1
    except Exception as err:  # click usage errors carry their own exit code
        import click

        if isinstance(err, click.ClickException):
            err.show()
            return int(err.exit_code)
        raise
    return result if isinstance(result, int) else 0
