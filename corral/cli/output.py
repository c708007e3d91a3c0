"""How listings look: a rich table on a terminal, plain aligned columns when piped.

Invariants: piped output (stdout not a terminal) has no box-drawing characters and no colour;
``NO_COLOR`` (any value) turns colour off on a terminal too (rich reads it itself). ``--json``
output is one JSON document (or one per line where a command says so), never a table.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["emit_json", "plain"]


def plain(table: Any) -> Any:
    """``table`` (a ``rich.table.Table``) without borders when stdout is not a terminal."""
    if not sys.stdout.isatty():
        table.box = None
        table.show_edge = False
        table.pad_edge = False
    return table


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
