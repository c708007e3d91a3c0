"""Shell words as the exec allowlist checker (``corral.tools.cmdcheck``) reads them: the value
of a word after quote removal, its canonical text for pattern matching, and the text between
parsed parts that bash must not read as an expansion.

Invariants (each fails towards "needs approval"):
- ``literal`` gives a value only for a word with no expansion of any kind (parameter, command,
  glob, brace, tilde); anything else is None, never a guess.
- ``canonical`` is the word after quote removal when that is plain characters, else the text
  as written (an unquoted word, or one that is no literal) or the value shell-quoted, so a
  quoted ``"a b"`` never reads as the two words ``a b`` against a pattern.
- Text the parser left as plain (a word, the gaps between the parts of a string or heredoc)
  may hold no backquote or ``$`` that starts something: tree-sitter did not see an expansion
  there, so bash must not either.
- ``check_word`` accepts a word only by its shape (the list is in ``corral.tools.cmdcheck``):
  of parameter expansions, only those that run no code whatever the variables hold (no
  arithmetic: substrings, subscripts; no assignment: ``=``, ``:=``; no indirection ``!``; no
  transformation ``@``); every other node type raises ``Hold``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable

import tree_sitter

__all__ = [
    "Hold",
    "canonical",
    "check_word",
    "literal",
    "node_text",
    "quote_value",
]

_NAME = r"(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)"
_OPERAND = rf"(?:[A-Za-z0-9_./,:@%+=*?#^-]|\${_NAME}|\$\{{{_NAME}\}})*"
# The parameter expansions that run no code whatever the variables hold: no arithmetic
# (substrings, subscripts), no assignment (=, :=), no indirection (!), no transformation (@).
_SAFE_EXPANSION = re.compile(
    rf"\$\{{(?:{_NAME}|[@*#?$!-]|#{_NAME}"
    rf"|{_NAME}(?::?[-+?]|##?|%%?|//?|\^\^?|,,?){_OPERAND})\}}\Z"
)
_SAFE_SIMPLE_EXPANSION = re.compile(rf"\$(?:{_NAME}|[@*#?$!0_-])\Z")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


class Hold(Exception):
    """Raised inside the walk: the command needs approval, with this reason."""


def node_text(node: tree_sitter.Node) -> str:
    return (node.text or b"").decode("utf-8", "surrogateescape")


def _unescape_unquoted(raw: str) -> str:
    return re.sub(r"\\(.)", r"\1", raw, flags=re.DOTALL)


def literal(node: tree_sitter.Node) -> str | None:
    """The value of a word after quote removal, or None if it contains any expansion."""
    kind = node.type
    if kind in ("word", "number"):
        raw = node_text(node)
        if any(c in raw for c in "*?[{$") or re.search(r"(?:^|[=:])~", raw):
            return None  # globbing, brace or tilde expansion: not a fixed value
        return _unescape_unquoted(raw)
    if kind == "raw_string":
        return node_text(node)[1:-1]
    if kind == "string":
        out = []
        for child in node.children:
            if child.type == "string_content":
                out.append(re.sub(r'\\([$`"\\\n])', r"\1", node_text(child)))
            elif child.type == "$" and not child.is_named:
                out.append("$")  # a `$` before the closing quote is itself
            elif child.is_named or child.type != '"':
                return None
        return "".join(out)
    if kind == "concatenation":
        pieces: list[str | None] = []
        for child in node.children:
            pieces.append("$" if child.type == "$" and not child.is_named else literal(child))
        if any(p is None for p in pieces):
            return None
        return "".join(p for p in pieces if p is not None)
    return None


def _scan_plain(raw: str) -> None:
    """Text that bash reads without expanding: no unescaped backquote, no ``$`` starting
    anything (tree-sitter did not see an expansion here, so bash must not either)."""
    index = 0
    while index < len(raw):
        char = raw[index]
        if char == "\\":
            index += 2
            continue
        if char == "`":
            raise Hold(f"a backquote the parser did not read as a substitution: {raw!r}")
        if char == "$" and index + 1 < len(raw) and raw[index + 1] not in ' \t\n"':
            raise Hold(f"an expansion the parser did not read: {raw!r}")
        index += 1


def _gaps(node: tree_sitter.Node, parts: Iterable[tree_sitter.Node]) -> str:
    """The text of ``node`` with the given child parts blanked out."""
    raw = node.text or b""
    start = node.start_byte
    out = bytearray(raw)
    for part in parts:
        width = part.end_byte - part.start_byte
        out[part.start_byte - start:part.end_byte - start] = b" " * width
    return bytes(out).decode("utf-8", "surrogateescape")


def canonical(node: tree_sitter.Node) -> str:
    value = literal(node)
    if value is None:
        return node_text(node)
    if _SAFE_WORD.match(value):
        return value
    if node.type == "word":
        return node_text(node)
    return shlex.quote(value)


def quote_value(value: str | None) -> str:
    if value is None:
        return "$?"  # an expansion: matches only patterns with '*' there
    return value if _SAFE_WORD.match(value) else shlex.quote(value)


def check_word(node: tree_sitter.Node, walk: Callable[[tree_sitter.Node], None]) -> None:
    """A word (argument, assignment value, redirection target): accepted only in the
    shapes listed in ``corral.tools.cmdcheck``; the statements of a command substitution in
    it go to ``walk``."""
    kind = node.type
    if kind in ("word", "number"):
        _scan_plain(node_text(node))
    elif kind in ("raw_string", "ansi_c_string"):
        return
    elif kind == "simple_expansion":
        if not _SAFE_SIMPLE_EXPANSION.match(node_text(node)):
            raise Hold(f"expansion the checker cannot read: {node_text(node)!r}")
    elif kind == "expansion":
        if not _SAFE_EXPANSION.match(node_text(node)):
            raise Hold(
                "parameter expansion beyond a name or a literal default (operators that "
                f"assign, arithmetic, subscripts, indirection, quoting): {node_text(node)!r}"
            )
    elif kind in ("command_substitution", "process_substitution"):
        text = node_text(node)
        if text.startswith("`") and "\\" in text:
            # bash re-parses a backquoted body after removing backslashes, so \` and \$(
            # inside it start new substitutions that tree-sitter reads as plain text.
            raise Hold("backslashes inside `...` are re-parsed by bash; use $(...) instead")
        for child in node.named_children:
            walk(child)
    elif kind in ("string", "heredoc_body", "concatenation"):
        _compound_word(node, walk)
    elif kind == "arithmetic_expansion":
        raise Hold("arithmetic expansion $(( )) is not checked")
    else:
        raise Hold(f"unsupported shell construct: {kind.replace('_', ' ')}")

def _compound_word(node: tree_sitter.Node, walk: Callable[[tree_sitter.Node], None]) -> None:
    children = node.children
    parts = []
    for index, child in enumerate(children):
        if not child.is_named:
            if child.type == "$" and index + 1 < len(children) and children[
                    index + 1].start_byte == child.end_byte and children[index + 1].type in (
                    "string", "raw_string"):
                raise Hold("$\"...\" is translated, then expanded again")
            if child.type not in ('"', "$"):
                raise Hold(f"unexpected token {child.type!r} in a word")
            continue
        if child.type in ("string_content", "heredoc_content"):
            continue  # scanned with the gaps below
        parts.append(child)
        if node.type in ("heredoc_body", "string") and child.type not in (
                "simple_expansion", "expansion", "command_substitution",
                "arithmetic_expansion"):
            raise Hold(f"unsupported shell construct: {child.type.replace('_', ' ')}")
        check_word(child, walk)
    if node.type != "concatenation":
        _scan_plain(_gaps(node, parts))
