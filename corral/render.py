"""Agent-controlled text made safe to show on a terminal.

Hosts, paths, rule origins, reasons, commands and tool arguments in the audit trail and the
approvals store are chosen (directly or not) by the agent. Shown to a human they are data:

Invariants:
- ``visible`` replaces every character that can drive a terminal or reorder what is shown
  (C0 controls, DEL, C1 controls, Unicode bidi controls, line/paragraph separators) and lone
  surrogates (they cannot be encoded, so printing them would crash) with a visible escape
  (``\\x1b``, ``\\r``, ``\\u202e``); every other character, ``[`` and ``]`` included, is kept.
- ``console`` returns a rich console that never interprets markup, emoji codes or highlighting
  in any string it renders, and passes each string through ``visible`` first: a table cell or a
  printed line is always shown literally, whoever wrote it.
- No rich import at module level: ``corral run``'s plain summary uses ``visible`` alone.
- ``NO_COLOR`` set to anything but the empty string (https://no-color.org, read the same way by
  rich) means no colour in anything corral prints: rich consoles read it themselves (never pass
  ``no_color=False``), and colour that is not rich's (uvicorn's log lines under ``corral server``
  and ``corral mcp --http``) is turned off with ``no_color()``.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["console", "no_color", "visible"]

_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with terminal-driving characters replaced by visible escapes."""
    return _UNSAFE.sub(_escape, text)


def no_color() -> bool:
    """Whether the user asked for no colour (``NO_COLOR`` set and not empty)."""
    return os.environ.get("NO_COLOR", "") != ""


def console(**kwargs: Any) -> Console:
    """A rich console for which every string is data (see the module invariants)."""
    from rich.console import Console
    from rich.text import Text

    class _DataConsole(Console):
        def render_str(self, text: str, **options: Any) -> Text:
            options.update(markup=False, emoji=False, highlight=False)
            return super().render_str(visible(text), **options)

    kwargs.setdefault("highlight", False)
    return _DataConsole(markup=False, emoji=False, **kwargs)
