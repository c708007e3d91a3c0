"""The typer command tree. Each command group lives in its own module under ``corral.cli``.

Invariants:
- Nothing a user types ends in a traceback. Usage errors (unknown options, missing or malformed
  values, from typer's own click or from ``guard``) are one ``corral: ...`` line and exit 2;
  ``CorralError`` is its message and its exit code; a permission problem says to try sudo; any
  other exception is one line naming it and exits 1 (``CORRAL_DEBUG=1`` re-raises it).
- Every parameter of the tree passes through ``guard.harden`` (no empty strings, finite numbers
  in range), so a new option gets the same checks without an edit here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Annotated

import typer

from corral import __version__
from corral.cli.guard import harden, usage_line
from corral.errors import CorralError

__all__ = ["app", "command", "main"]

# Group name -> module exposing ``app: typer.Typer``. A group is wired in once its module exists,
# so the tree grows as features land without a central edit per command.
GROUPS = ("policy", "creds", "audit", "sandbox", "mcp", "approvals", "server", "team", "project",
          "agent", "token", "budget", "spend")

app = typer.Typer(
    name="corral",
    help="Run AI agents in governed Linux sandboxes.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"corral {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print corral's version and exit.")] = False,
) -> None:
    """Run AI agents in governed Linux sandboxes."""


@app.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                      "help_option_names": []},
    help="Run a command inside a sandbox: corral run [OPTIONS] CMD [ARGS...] "
    "(corral run --help lists the options).",
)
def _run(ctx: typer.Context) -> None:
    # Reached only through the typer tree (``corral.cli.main`` dispatches ``run`` before it).
    from corral.cli.run import run_main

    raise typer.Exit(run_main(list(ctx.args)))


for _name in GROUPS:
    _module_name = f"corral.cli.{_name}"
    if importlib.util.find_spec(_module_name) is not None:
        _module = importlib.import_module(_module_name)
        app.add_typer(_module.app, name=_name, help=(_module.__doc__ or "").strip().split("\n")[0])

# SSO login to corral server: top-level verbs, not a group.
if importlib.util.find_spec("corral.cli.login") is not None:
    from corral.cli import login as _login

    for _verb in ("login", "logout", "whoami"):
        app.command(_verb)(getattr(_login, _verb))


def command() -> typer.core.TyperGroup:
    """The click command of ``app`` with ``guard``'s rules on every parameter."""
    import typer.main

    return harden(typer.main.get_command(app))  # type: ignore[no-any-return]


def main(argv: list[str]) -> int:
    try:
        result = command().main(args=argv, prog_name="corral", standalone_mode=False)
    except CorralError as err:
        for line in getattr(err, "problems", None) or [str(err)]:
            print(f"corral: {line}", file=sys.stderr)
        return err.exit_code
    except typer.Exit as done:
        return int(done.exit_code or 0)
    except typer.Abort:
        print("corral: aborted", file=sys.stderr)
        return 1
    except typer.TyperException as err:  # typer's bundled click: usage and file errors
        code = int(getattr(err, "exit_code", 2))
        print(f"corral: {usage_line(err) if code == 2 else err.format_message()}",
              file=sys.stderr)
        return code
    except PermissionError as err:
        what = f"{err.filename}: " if err.filename else ""
        print(f"corral: {what}permission denied (try sudo)", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"corral: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if os.environ.get("CORRAL_DEBUG"):
            raise
        text = " ".join(str(err).split())
        print(f"corral: internal error: {type(err).__name__}: {text} "
              "(CORRAL_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0
