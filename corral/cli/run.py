"""``corral run``: the lean launch path (no typer, no rich, no pydantic unless needed)."""

from __future__ import annotations

import sys

__all__ = ["run_main"]

EXIT_CORRAL_FAILURE = 125


def run_main(argv: list[str]) -> int:
    print("corral run: the sandbox harness is not built yet", file=sys.stderr)
    return EXIT_CORRAL_FAILURE
