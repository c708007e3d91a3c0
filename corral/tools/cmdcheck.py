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
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import tree_sitter
import tree_sitter_bash

from corral.tools.escapes import escape_hatch

__all__ = ["CommandChecker", "Verdict", "check_command"]

_LANGUAGE = tree_sitter.Language(tree_sitter_bash.language())

# Node types that only structure commands; their children are checked.
_STRUCTURE = {
    "program", "list", "pipeline", "subshell", "redirected_statement", "negated_command",
    "comment", "compound_statement",
}
_NAME = r"(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)"
_OPERAND = rf"(?:[A-Za-z0-9_./,:@%+=*?#^-]|\${_NAME}|\$\{{{_NAME}\}})*"
# The parameter expansions that run no code whatever the variables hold: no arithmetic
# (substrings, subscripts), no assignment (=, :=), no indirection (!), no transformation (@).
_SAFE_EXPANSION = re.compile(
    rf"\$\{{(?:{_NAME}|[@*#?$!-]|#{_NAME}"
    rf"|{_NAME}(?::?[-+?]|##?|%%?|//?|\^\^?|,,?){_OPERAND})\}}\Z"
)
_SAFE_SIMPLE_EXPANSION = re.compile(rf"\$(?:{_NAME}|[@*#?$!0_-])\Z")
ALWAYS_HOLD = frozenset({
    "eval", "source", ".", "alias", "unalias", "trap", "enable", "builtin", "declare", "typeset",
    "export", "readonly", "local", "unset", "set", "shopt", "hash", "fc", "history", "let",
    "coproc", "xargs", "sudo", "doas", "su", "mapfile", "readarray", "bind", "complete",
    "compgen", "function", "parallel", "watch", "flock", "chroot", "unshare", "nsenter",
    "setpriv", "runuser", "pkexec", "script", "strace", "ltrace", "gdb", "taskset", "chrt",
    "systemd-run", "expect",
})
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "rbash"})
_WRAPPERS = frozenset({
    "env", "command", "exec", "nice", "nohup", "time", "timeout", "stdbuf", "setsid", "ionice",
})
_DIR_CHANGERS = frozenset({"cd", "pushd", "popd"})
# Builtins that evaluate array subscripts (and so $(...) inside a literal) in their arguments.
_SUBSCRIPT_EVAL = frozenset({"read", "printf", "test", "[", "getopts", "wait"})
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
_SAFE_TARGETS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/stdin", "/dev/tty"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """``allowed`` means: run without approval. ``reason`` says why (or why not), one line."""

    allowed: bool
    reason: str
    commands: tuple[str, ...] = ()  # canonical simple commands found
    unmatched: tuple[str, ...] = field(default=())


class _Hold(Exception):
    """Raised inside the walk: the command needs approval, with this reason."""


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    parts = (re.escape(chunk) for chunk in pattern.strip().split("*"))
    return re.compile(".*".join(parts), re.DOTALL)


def _text(node: tree_sitter.Node) -> str:
    return (node.text or b"").decode("utf-8", "surrogateescape")


def _unescape_unquoted(raw: str) -> str:
    return re.sub(r"\\(.)", r"\1", raw, flags=re.DOTALL)


def _literal(node: tree_sitter.Node) -> str | None:
    """The value of a word after quote removal, or None if it contains any expansion."""
    kind = node.type
    if kind in ("word", "number"):
        raw = _text(node)
        if any(c in raw for c in "*?[{$") or re.search(r"(?:^|[=:])~", raw):
            return None  # globbing, brace or tilde expansion: not a fixed value
        return _unescape_unquoted(raw)
    if kind == "raw_string":
        return _text(node)[1:-1]
    if kind == "string":
        out = []
        for child in node.children:
            if child.type == "string_content":
                out.append(re.sub(r'\\([$`"\\\n])', r"\1", _text(child)))
            elif child.type == "$" and not child.is_named:
                out.append("$")  # a `$` before the closing quote is itself
            elif child.is_named or child.type != '"':
                return None
        return "".join(out)
    if kind == "concatenation":
        pieces: list[str | None] = []
        for child in node.children:
            pieces.append("$" if child.type == "$" and not child.is_named else _literal(child))
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
            raise _Hold(f"a backquote the parser did not read as a substitution: {raw!r}")
        if char == "$" and index + 1 < len(raw) and raw[index + 1] not in ' \t\n"':
            raise _Hold(f"an expansion the parser did not read: {raw!r}")
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


def _canonical(node: tree_sitter.Node) -> str:
    value = _literal(node)
    if value is None:
        return _text(node)
    if _SAFE_WORD.match(value):
        return value
    if node.type == "word":
        return _text(node)
    return shlex.quote(value)


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
                raise _Hold("line continuation (backslash-newline) is not checked; join the lines")
            if "\x00" in command:
                raise _Hold("NUL byte in command")
            tree = tree_sitter.Parser(_LANGUAGE).parse(command.encode("utf-8", "surrogateescape"))
            root = tree.root_node
            if root.has_error:
                raise _Hold("the command does not parse cleanly as bash")
            self._changes_dir = any(
                self._name_of(n) in _DIR_CHANGERS for n in self._iter(root, "command")
            )
            self._walk(root, found, unmatched)
        except _Hold as hold:
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
        value = _literal(name.named_children[0])
        return posixpath.basename(value) if value is not None else None

    def _walk(self, node: tree_sitter.Node, found: list[str], unmatched: list[str]) -> None:
        """A statement: structure whose children are statements, or a command."""
        kind = node.type
        if kind == "command":
            self._command(node, found, unmatched)
        elif kind == "comment":
            return
        elif kind == "compound_statement" and not _text(node).startswith("{"):
            raise _Hold("arithmetic (( )) is not checked")
        elif kind in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
            self._redirect(node, found, unmatched)
        elif kind in _STRUCTURE:
            for child in node.named_children:
                self._walk(child, found, unmatched)
        else:
            raise _Hold(f"unsupported shell construct: {kind.replace('_', ' ')}")

    def _word(self, node: tree_sitter.Node, found: list[str], unmatched: list[str]) -> None:
        """A word (argument, assignment value, redirection target): accepted only in the
        shapes listed in the module docstring; command substitutions in it are walked."""
        kind = node.type
        if kind in ("word", "number"):
            _scan_plain(_text(node))
        elif kind in ("raw_string", "ansi_c_string"):
            return
        elif kind == "simple_expansion":
            if not _SAFE_SIMPLE_EXPANSION.match(_text(node)):
                raise _Hold(f"expansion the checker cannot read: {_text(node)!r}")
        elif kind == "expansion":
            if not _SAFE_EXPANSION.match(_text(node)):
                raise _Hold(
                    "parameter expansion beyond a name or a literal default (operators that "
                    f"assign, arithmetic, subscripts, indirection, quoting): {_text(node)!r}"
                )
        elif kind in ("command_substitution", "process_substitution"):
            text = _text(node)
            if text.startswith("`") and "\\" in text:
                # bash re-parses a backquoted body after removing backslashes, so \` and \$(
                # inside it start new substitutions that tree-sitter reads as plain text.
                raise _Hold("backslashes inside `...` are re-parsed by bash; use $(...) instead")
            for child in node.named_children:
                self._walk(child, found, unmatched)
        elif kind in ("string", "heredoc_body", "concatenation"):
            self._compound_word(node, found, unmatched)
        elif kind == "arithmetic_expansion":
            raise _Hold("arithmetic expansion $(( )) is not checked")
        else:
            raise _Hold(f"unsupported shell construct: {kind.replace('_', ' ')}")

    def _compound_word(
        self, node: tree_sitter.Node, found: list[str], unmatched: list[str]
    ) -> None:
        children = node.children
        parts = []
        for index, child in enumerate(children):
            if not child.is_named:
                if child.type == "$" and index + 1 < len(children) and children[
                        index + 1].start_byte == child.end_byte and children[index + 1].type in (
                        "string", "raw_string"):
                    raise _Hold("$\"...\" is translated, then expanded again")
                if child.type not in ('"', "$"):
                    raise _Hold(f"unexpected token {child.type!r} in a word")
                continue
            if child.type in ("string_content", "heredoc_content"):
                continue  # scanned with the gaps below
            parts.append(child)
            if node.type in ("heredoc_body", "string") and child.type not in (
                    "simple_expansion", "expansion", "command_substitution",
                    "arithmetic_expansion"):
                raise _Hold(f"unsupported shell construct: {child.type.replace('_', ' ')}")
            self._word(child, found, unmatched)
        if node.type != "concatenation":
            _scan_plain(_gaps(node, parts))

    def _redirect(self, node: tree_sitter.Node, found: list[str], unmatched: list[str]) -> None:
        if node.type == "file_redirect":
            dest = node.child_by_field_name("destination")
            if dest is not None and dest.type not in ("number", "process_substitution"):
                value = _literal(dest)
                if value is None:
                    raise _Hold(f"redirection target is not a literal path: {_text(dest)!r}")
                if value != "-":
                    self._require_inside(value)
        quoted = False
        for child in node.named_children:
            if child.type == "heredoc_start":
                # <<'EOF', <<"EOF", <<\EOF: the body is literal text
                quoted = any(c in _text(child) for c in "'\"\\")
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
            raise _Hold(f"relative redirection {path!r} after a directory change")
        full = posixpath.normpath(posixpath.join(self.cwd, path))
        if full != self.workspace and not full.startswith(self.workspace + "/"):
            raise _Hold(f"redirection outside the workspace: {path!r}")

    def _command(self, node: tree_sitter.Node, found: list[str], unmatched: list[str]) -> None:
        words: list[tree_sitter.Node] = []
        prefix: list[str] = []
        for child in node.children:
            if not child.is_named:
                if child.type == "$":
                    raise _Hold("a lone '$' or a $\"...\" translated string")
                continue
            if child.type == "variable_assignment":
                prefix.append(_text(child))
                for part in child.named_children:
                    if part.type == "variable_name":
                        continue
                    if part.type == "subscript":
                        raise _Hold(f"assignment to a subscript: {_text(child)!r}")
                    self._word(part, found, unmatched)
            elif child.type == "command_name":
                words.append(child.named_children[0])
            elif child.type in ("file_redirect", "herestring_redirect", "heredoc_redirect"):
                self._redirect(child, found, unmatched)
            else:
                words.append(child)
        if not words:
            raise _Hold("an assignment without a command")
        for word in words:
            self._word(word, found, unmatched)
        name = _literal(words[0])
        if name is None:
            raise _Hold(f"command name is not a literal: {_text(words[0])!r}")
        if any(c in name for c in "\n\r\t "):
            raise _Hold(f"command name contains whitespace: {name!r}")
        argv: list[str | None] = [name, *(_literal(w) for w in words[1:])]
        canon = " ".join([*prefix, *(_canonical(w) for w in words)])
        self._simple(argv, canon, found, unmatched)

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
            raise _Hold("command name is not a literal")
        base = posixpath.basename(name)
        if base in ALWAYS_HOLD:
            raise _Hold(f"{base!r} can run dynamic code or change the shell: always needs approval")
        if base in _SUBSCRIPT_EVAL and any(a is None or "[" in a for a in argv[1:]):
            raise _Hold(f"{base!r} with subscripts or expansions can evaluate code")
        hatch = escape_hatch([base, *argv[1:]])
        if hatch is not None:
            raise _Hold(f"{hatch}: needs approval even where a pattern matches")
        if base in _SHELLS:
            self._shell(argv, found, unmatched)
        elif base in _WRAPPERS:
            assigned: list[str] = []
            inner = self._unwrap(base, argv[1:], assigned)
            if inner:
                # `env X=1 cmd` is `X=1 cmd`: a pattern must name the assignments too (they can
                # inject code: LD_PRELOAD, BASH_ENV, PATH, GIT_SSH_COMMAND, ...).
                canon_inner = " ".join([*(_quote_value(a) for a in assigned),
                                        *(_quote_value(a) for a in inner)])
                self._simple(inner, canon_inner, found, unmatched)
            elif base == "exec" and len(argv) == 1:
                raise _Hold("bare 'exec' changes the shell's file descriptors")

    def _shell(self, argv: Sequence[str | None], found: list[str], unmatched: list[str]) -> None:
        args = list(argv[1:])
        if len(args) >= 2 and args[0] == "-c" and args[1] is not None:
            sub = CommandChecker(self.allow, workspace=self.workspace, cwd=self.cwd).check(args[1])
            found.extend(sub.commands)
            if not sub.allowed:
                if sub.unmatched:
                    unmatched.extend(sub.unmatched)
                else:
                    raise _Hold(f"inner script: {sub.reason}")
            return
        raise _Hold("a shell without a literal -c script runs code the checker cannot see")

    @staticmethod
    def _unwrap(
        base: str, args: Sequence[str | None], assigned: list[str]
    ) -> list[str | None]:
        """The inner argv of a wrapper, skipping its options; raises if it cannot tell."""
        rest = list(args)
        with_value = {
            "env": {"-u", "--unset", "-C", "--chdir"},
            "exec": {"-a"},
            "nice": {"-n", "--adjustment"},
            "timeout": {"-s", "--signal", "-k", "--kill-after"},
            "stdbuf": {"-i", "-o", "-e"},
            "ionice": {"-c", "-n", "-p", "-P", "-u"},
        }.get(base, set())
        while rest:
            arg = rest[0]
            if arg is None:
                raise _Hold(f"{base}: an expanded argument hides the inner command")
            if arg == "--":
                rest.pop(0)
                break
            if base == "env" and (arg.startswith(("-S", "--split-string")) or arg == "-"):
                raise _Hold("env -S splits a string into a command the checker cannot see")
            if base == "env" and "=" in arg and not arg.startswith("-"):
                assigned.append(rest.pop(0))  # type: ignore[arg-type]
                continue
            if arg.startswith("-") and arg != "-":
                rest.pop(0)
                if arg in with_value and rest:
                    rest.pop(0)
                continue
            break
        if base == "timeout" and rest:
            rest.pop(0)  # the duration
        if base == "command" and args and args[0] in ("-v", "-V"):
            return []
        return rest

    def _matches(self, canon: str) -> bool:
        return any(_compile(p).fullmatch(canon) for p in self.allow)


def _quote_value(value: str | None) -> str:
    if value is None:
        return "$?"  # an expansion: matches only patterns with '*' there
    return value if _SAFE_WORD.match(value) else shlex.quote(value)


def check_command(
    command: str, allow: Iterable[str], *, workspace: str = "/workspace", cwd: str | None = None
) -> Verdict:
    """Check ``command`` against ``allow`` (see the module docstring)."""
    return CommandChecker(allow, workspace=workspace, cwd=cwd).check(command)
