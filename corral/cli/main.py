"""Entry point of the ``corral`` command.

``corral run`` is the hot path: it must start a sandbox fast, so it is dispatched before the
typer command tree is imported (typer, rich and pydantic together cost ~150 ms). Every other
command goes through the typer app.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "run" and "--help" not in args[1:2]:
        from corral.cli.run import run_main

        return run_main(args[1:])
    from corral.cli.app import main as app_main

    return app_main(args)


if __name__ == "__main__":
    sys.exit(main())
