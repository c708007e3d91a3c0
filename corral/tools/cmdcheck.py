"""The ``exec.mode: allowlist`` checker: may this shell command run without a human?

The command is parsed with tree-sitter-bash. It runs without approval only if EVERY simple
command in it (through ``;``, ``&&``, ``||``, ``&``, pipes, newlines, subshells, ``{ }``,
``$(...)``, backticks, process substitution, here-strings and unquoted heredoc bodies) matches
an allow pattern, and nothing in it is beyond what the parser can prove.

Invariants (each one fails towards "needs approval", never towards "allowed"):
- Only node types this module knows are accepted; anything else (loops, functions, ``[[ ]]``,
  arithmetic, assignments standing alone, declaration builtins, parse errors, missing tokens,
  line continuations, which tree-sitter and bash split differently) needs approval.
- A command name must be a literal after quote removal (``g"it"`` is ``git``); an expanded name
  (``$CMD``, ``$(...)``) needs approval.
- Builtins that run dynamic code or change how later words are read (``eval``, ``source``,
  ``.``, ``alias``, ``trap``, ``export``, ``let``, shells without a literal ``-c`` script, ...)
  always need approval, whatever the patterns say.
- Wrappers (``env``, ``command``, ``exec``, ``nice``, ``nohup``, ``time``, ``timeout``,
  ``stdbuf``, ``setsid``) must match a pattern themselves AND their inner command must too
  (with ``env``'s assignments in front, as for prefix assignments);
  ``sh -c 'LITERAL'`` is checked recursively. Prefix assignments (``X=1 cmd``) are part of the
  text a pattern must match.
- A redirection target must be a literal path inside the workspace (or ``/dev/null`` and the
  standard streams); a relative target is refused when the command changes directory.
- Words are accepted by shape, never by the absence of known-bad text: literals, plain
  ``$name``/``${name}``/``${#name}``, and ``${name OP operand}`` for the operators that neither
  assign nor evaluate arithmetic, with an operand of safe characters and plain expansions only.
  Everything else (``${v:off}``, ``${a[i]}``, ``${!v}``, ``${v:=x}``, ``${v@P}``, ``$((..))``,
  ``$[..]``, ``$"..."``, an operand holding quotes, backticks or ``$(...)``) needs approval:
  bash evaluates arithmetic (and so ``$(...)`` inside a variable's value) or sees command
  substitutions where tree-sitter sees text. Text left between parsed parts may hold no ``$``
  or backquote that starts anything.
- Known tools with an option form that runs any program (``git -c``, ``find -exec``, ``tar
  --to-command``, ``python -c``, ...; ``corral.tools.escapes``) need approval even when a
  pattern matches.

A pattern is matched against the canonical text of one simple command (words after quote
removal, joined by single spaces; words that need quoting are shell-quoted, so ``git "a b"``
does not pass for ``git a b``); ``*`` matches any characters.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import tree_sitter
import tree_sitter_bash

from corral.tools._commands import SHELLS, WRAPPERS, hold_always, unwrap
from corral.tools._shellwords import (
    Hold,
    canonical,
    check_word,
    literal,
    node_text,
    quote_value,
)

__all__ = ["CommandChecker", "Verdict", "check_command"]

_LANGUAGE = tree_sitter.Language(tree_sitter_bash.language())

# Node types that only structure commands; their children are checked.
_STRUCTURE = {
    "program", "list", "pipeline", "subshell", "redirected_statement", "negated_command",
    "comment", "compound_statement",
}
_DIR_CHANGERS = frozenset({"cd", "pushd", "popd"})
_SAFE_TARGETS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/stdin", "/dev/tty"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """``allowed`` means: run without approval. ``reason`` says why (or why not), one line."""

    allowed: bool
    reason: str
    commands: tuple[str, ...] = ()  # canonical simple commands found
    unmatched: tuple[str, ...] = field(default=())


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    parts = (re.escape(chunk) for chunk in pattern.strip().split("*"))
    return re.compile(".*".join(parts), re.DOTALL)


class CommandChecker:
    """Checks commands against one compiled set of allow patterns."""

    def __init__(
        self, allow: Iterable[str], *, workspace: str = "/workspace", cwd: str | None = None
    ) -> None:
        self.allow = tuple(p for p in allow if p.strip())
        self.workspace = posixpath.normpath(workspace)
        self.cwd = posixpath.normpath(cwd or workspace)

    def check(self, command: str) -> Verdict:
        found: list[str] = []
        unmatched: list[str] = []
        try:
            if "\\\n" in command or "\\\r\n" in command:
                raise Hold("line continuation (backslash-newline) is not checked; join the lines")
            if "\x00" in command:
                raise Hold("NUL byte in command")
            tree = tree_sitter.Parser(_LANGUAGE).parse(command.encode("utf-8", "surrogateescape"))
            root = tree.root_node
            if root.has_error:
                raise Hold("the command does not parse cleanly as bash")
            self._changes_dir = any(
                self._name_of(n) in _DIR_CHANGERS for n in self._iter(root, "command")
            )
            self._walk(root, found, unmatched)
        except Hold as hold:
            return Verdict(False, str(hold), tuple(found), tuple(unmatched))
        if not found:
            return Verdict(False, "no command found", (), ())
        if unmatched:
            return Verdict(
                False, f"not in exec.allow: {unmatched[0]!r}", tuple(found), tuple(unmatched)
            )
        return Verdict(True, "every command matches exec.allow", tuple(found), ())

    # -- the walk ---------------------------------------------------------------------------

    @staticmethod
    def _iter(node: tree_sitter.Node, kind: str) -> Iterable[tree_sitter.Node]:
        stack = [node]
        while stack:
            current = stack.pop()
            if current.type == kind:
                yield current
            stack.extend(current.named_children)

    def _name_of(self, command: tree_sitter.Node) -> str | None:
        name = command.child_by_field_name("name")
        if name is None or not name.named_children:
            return None
        value = literal(name.named_children[0])
        return posixpath.basename(value) if value is not None else None

    def _walk(self, node: tree_sitter.Node, found: list[str], unmatched: list[str]) -> None:
        """A statement: structure whose children are statements, or a command."""
        kind = node.type
        if kind == "command":
            self._command(node, found, unmatched)
        elif kind == "comment":
            return
        elif kind == "compound_statement" and not node_text(node).startswith("{"):
            raise Hold("arithmetic (( )) is not checked")
        elif kind in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
            self._redirect(node, found, unmatched)
        elif kind in _STRUCTURE:
            for child in node.named_children:
                self._walk(child, found, unmatched)
        else:
            raise Hold(f"unsupported shell construct: {kind.replace('_', ' ')}")

    def _word(self, node: tree_sitter.Node, found: list[str], unmatched: list[str]) -> None:
        check_word(node, lambda statement: self._walk(statement, found, unmatched))

    def _redirect(self, node: tree_sitter.Node, found: list[str], unmatched: list[str]) -> None:
        if node.type == "file_redirect":
            dest = node.child_by_field_name("destination")
            if dest is not None and dest.type not in ("number", "process_substitution"):
                value = literal(dest)
                if value is None:
                    raise Hold(f"redirection target is not a literal path: {node_text(dest)!r}")
                if value != "-":
                    self._require_inside(value)
        quoted = False
        for child in node.named_children:
            if child.type == "heredoc_start":
                # <<'EOF', <<"EOF", <<\EOF: the body is literal text
                quoted = any(c in node_text(child) for c in "'\"\\")
            elif child.type in ("file_descriptor", "heredoc_end"):
                continue
            elif child.type == "heredoc_body":
                if not quoted:
                    self._word(child, found, unmatched)
            elif node.type == "heredoc_redirect":
                self._walk(child, found, unmatched)  # the rest of the line: `| grep x`, ...
            else:
                self._word(child, found, unmatched)

    def _require_inside(self, path: str) -> None:
        if path in _SAFE_TARGETS:
            return
        if not path.startswith("/") and self._changes_dir:
            raise Hold(f"relative redirection {path!r} after a directory change")
        full = posixpath.normpath(posixpath.join(self.cwd, path))
        if full != self.workspace and not full.startswith(self.workspace + "/"):
            raise Hold(f"redirection outside the workspace: {path!r}")

    def _command(self, node: tree_sitter.Node, found: list[str], unmatched: list[str]) -> None:
        words: list[tree_sitter.Node] = []
        prefix: list[str] = []
        for child in node.children:
            if not child.is_named:
                if child.type == "$":
                    raise Hold("a lone '$' or a $\"...\" translated string")
                continue
            if child.type == "variable_assignment":
                prefix.append(self._assignment(child, found, unmatched))
            elif child.type == "command_name":
                words.append(child.named_children[0])
            elif child.type in ("file_redirect", "herestring_redirect", "heredoc_redirect"):
                self._redirect(child, found, unmatched)
            else:
                words.append(child)
        if not words:
            raise Hold("an assignment without a command")
        for word in words:
            self._word(word, found, unmatched)
        argv: list[str | None] = [_command_name(words[0]), *(literal(w) for w in words[1:])]
        canon = " ".join([*prefix, *(canonical(w) for w in words)])
        self._simple(argv, canon, found, unmatched)

    def _assignment(self, node: tree_sitter.Node, found: list[str], unmatched: list[str]) -> str:
        """A prefix assignment (``X=1 cmd``): its value is checked as a word; its text is part
        of what a pattern must match."""
        for part in node.named_children:
            if part.type == "variable_name":
                continue
            if part.type == "subscript":
                raise Hold(f"assignment to a subscript: {node_text(node)!r}")
            self._word(part, found, unmatched)
        return node_text(node)

    def _simple(
        self,
        argv: Sequence[str | None],
        canon: str,
        found: list[str],
        unmatched: list[str],
    ) -> None:
        found.append(canon)
        if not self._matches(canon):
            unmatched.append(canon)
        name = argv[0]
        if name is None:
            raise Hold("command name is not a literal")
        base = posixpath.basename(name)
        hold_always(base, argv[1:])
        if base in SHELLS:
            self._shell(argv, found, unmatched)
        elif base in WRAPPERS:
            assigned: list[str] = []
            inner = unwrap(base, argv[1:], assigned)
            if inner:
                # `env X=1 cmd` is `X=1 cmd`: a pattern must name the assignments too (they can
                # inject code: LD_PRELOAD, BASH_ENV, PATH, GIT_SSH_COMMAND, ...).
                canon_inner = " ".join([*(quote_value(a) for a in assigned),
                                        *(quote_value(a) for a in inner)])
                self._simple(inner, canon_inner, found, unmatched)
            elif base == "exec" and len(argv) == 1:
                raise Hold("bare 'exec' changes the shell's file descriptors")

    def _shell(self, argv: Sequence[str | None], found: list[str], unmatched: list[str]) -> None:
        args = list(argv[1:])
        if len(args) >= 2 and args[0] == "-c" and args[1] is not None:
            sub = CommandChecker(self.allow, workspace=self.workspace, cwd=self.cwd).check(args[1])
            found.extend(sub.commands)
            if not sub.allowed:
                if sub.unmatched:
                    unmatched.extend(sub.unmatched)
                else:
                    raise Hold(f"inner script: {sub.reason}")
            return
        raise Hold("a shell without a literal -c script runs code the checker cannot see")

    def _matches(self, canon: str) -> bool:
        return any(_compile(p).fullmatch(canon) for p in self.allow)


def _command_name(word: tree_sitter.Node) -> str:
    name = literal(word)
    if name is None:
        raise Hold(f"command name is not a literal: {node_text(word)!r}")
    if any(c in name for c in "\n\r\t "):
        raise Hold(f"command name contains whitespace: {name!r}")
    return name


def check_command(
    command: str, allow: Iterable[str], *, workspace: str = "/workspace", cwd: str | None = None
) -> Verdict:
    """Check ``command`` against ``allow`` (see the module docstring)."""
    return CommandChecker(allow, workspace=workspace, cwd=cwd).check(command)
