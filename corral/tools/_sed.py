"""The sed part of the built-in denials (``corral.tools.escapes``): does this sed command line
write a file or run a program?

sed runs programs (``e``, ``s///e``) and writes files (``w``, ``W``, ``s///w``) from inside its
script, and reads a script the checker cannot see from ``-f``/``--file``. So the options are
parsed as GNU sed reads them, the script (every ``-e``/``--expression``, or else the first
operand) is read command by command, and

Invariants (each fails towards "needs approval"):
- A script is accepted only if every command in it is one this reader knows and none of them
  runs, reads or writes anything (``e E w W r R``, an ``s`` or ``y`` with flag ``e`` or ``w``);
  a command it does not know, or text it cannot delimit, names the script unreadable.
- A delimiter inside ``[...]`` in a regex is literal for GNU sed 4.9 and not for older ones:
  the script is read both ways and refused if either reading finds something.
- ``--file`` by any abbreviation from ``--fi`` and ``-f`` anywhere in a short cluster are
  refused (a script the checker cannot see).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["sed_hatch"]

_SKIP = set(" \t\n;!" "0123456789$,~+" "=dDgGhHlnNpPxzF{}")  # separators, addresses, plain
_BRACKET = re.compile(r"\[\^?\]?(?:\[[:.=].*?[:.=]\]|[^]])*\]")
_LABEL_END = re.compile(r"[;\n]")
_TEXT_LINE = re.compile(r"(?:[^\n\\]|\\.)*\n", re.DOTALL)  # a/i/c text: a trailing \ continues
_S_FLAGS = re.compile(r"[^;\n}]*")


class _Script:
    """One sed script read from the start; ``pos`` is where the next command begins."""

    def __init__(self, script: str, brackets: bool) -> None:
        self.script, self.brackets, self.pos, self.end = script, brackets, 0, len(script)

    def hatch(self) -> str | None:
        """The first command that runs or writes something, or an unreadable one; raises
        ``ValueError`` on text it cannot delimit."""
        while self.pos < self.end:
            char = self.script[self.pos]
            if char in _SKIP:
                self.pos += 1
                continue
            step = _STEPS.get(char)
            if step is None:
                return f"sed command {char!r} that the checker cannot read"
            hit = step(self, char)
            if hit is not None:
                return hit
        return None

    def _delimited(self, start: int, regex: bool = True) -> int:
        """Index just past the text ending at the next unescaped delimiter ``script[start]``."""
        if start >= self.end:  # `s`, `y` or `\` last: no delimiter at all
            raise ValueError("no delimiter")
        script, delim, i = self.script, self.script[start], start + 1
        while i < self.end and script[i] != delim:
            if self.brackets and regex and script[i] == "[":
                close = _BRACKET.match(script, i)
                if close is None:
                    raise ValueError("unterminated bracket")
                i = close.end()
                continue
            i += 2 if script[i] == "\\" else 1
        if i >= self.end:
            raise ValueError("unterminated")
        return i + 1

    def _skip(self, chars: str) -> None:
        while self.pos < self.end and self.script[self.pos] in chars:
            self.pos += 1

    def _address(self, char: str) -> None:
        """``/regex/`` or ``\\cregexc``, with its ``I``/``M`` modifiers."""
        self.pos = self._delimited(self.pos + (char == "\\"))
        self._skip("IM")

    def _comment(self, _char: str) -> None:
        newline = self.script.find("\n", self.pos)
        self.pos = self.end if newline < 0 else newline

    def _quit(self, _char: str) -> None:  # q Q L: an optional exit code or number
        self.pos += 1
        self._skip(" 0123456789")

    def _label(self, _char: str) -> None:  # b B t T : v: a label to the end of the command
        stop = _LABEL_END.search(self.script, self.pos + 1)
        self.pos = stop.start() if stop else self.end

    def _text(self, _char: str) -> None:  # a i c: text to the end of the (continued) line
        line = _TEXT_LINE.match(self.script, self.pos)
        self.pos = line.end() if line else self.end

    def _substitute(self, char: str) -> str | None:  # s/re/text/flags, y/from/to/
        self.pos = self._delimited(self.pos + 1)
        self.pos = self._delimited(self.pos - 1, regex=False)
        if char == "s":
            flags = _S_FLAGS.match(self.script, self.pos)
            text = flags.group(0) if flags else ""
            if any(f in text for f in "ew"):
                return f"sed s///{'e' if 'e' in text else 'w'}"
            self.pos += len(text)
        return None

    def _runs(self, char: str) -> str:  # e E w W r R: a command that runs, reads or writes
        return f"sed {char} command"


_Step = Callable[[_Script, str], str | None]
_STEPS: dict[str, _Step] = {
    "/": _Script._address, "\\": _Script._address, "#": _Script._comment,
    **dict.fromkeys("qQL", _Script._quit), **dict.fromkeys("bBtT:v", _Script._label),
    **dict.fromkeys("aic", _Script._text), **dict.fromkeys("sy", _Script._substitute),
    **dict.fromkeys("eEwWrR", _Script._runs),
}


def _script_hatch(script: str, brackets: bool) -> str | None:
    try:
        return _Script(script, brackets).hatch()
    except ValueError:
        return "sed script the checker cannot read"


class _Args:
    """sed's command line read as GNU getopt reads it: the scripts and the operands."""

    def __init__(self, args: list[str]) -> None:
        self.args, self.index = args, 0
        self.scripts: list[str] = []
        self.operands: list[str] = []

    def read(self) -> str | None:
        """Collect scripts and operands; a hit if an option loads a script from a file."""
        while self.index < len(self.args):
            arg = self.args[self.index]
            self.index += 1
            if arg == "--":
                self.operands.extend(self.args[self.index:])
                return None
            hit = None
            if arg.startswith("--"):
                hit = self._long(arg)
            elif arg.startswith("-") and len(arg) > 1:
                hit = self._short(arg)
            else:
                self.operands.append(arg)
            if hit is not None:
                return hit
        return None

    def _value(self) -> str | None:
        """The next argument, taken as the value of the option before it."""
        if self.index >= len(self.args):
            return None
        self.index += 1
        return self.args[self.index - 1]

    def _long(self, arg: str) -> str | None:
        name, eq, value = arg[2:].partition("=")
        if "file".startswith(name) and name.startswith("fi"):
            return "sed --file (a script the checker cannot see)"
        if name and "expression".startswith(name):
            script = value if eq else self._value()
            if script is not None:
                self.scripts.append(script)
        elif name in ("line-length", "l"):
            self.index += not eq
        return None

    def _short(self, arg: str) -> str | None:
        for offset, letter in enumerate(arg[1:], 1):
            if letter == "f":
                return "sed -f (a script the checker cannot see)"
            if letter in "el":
                value = arg[offset + 1:] or self._value() or ""
                if letter == "e":
                    self.scripts.append(value)
                return None
            if letter == "i":
                return None  # -iSUFFIX
        return None


def sed_hatch(args: list[str]) -> str | None:
    """Why sed with these arguments (its name left out) can run or write, or None."""
    parsed = _Args(args)
    hit = parsed.read()
    if hit is not None:
        return hit
    scripts = parsed.scripts or parsed.operands[:1]
    for script in scripts:
        hit = _script_hatch(script, True) or _script_hatch(script, False)
        if hit is not None:
            return hit
    return None
