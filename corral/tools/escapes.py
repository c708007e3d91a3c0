"""Built-in denials: option forms that turn a known tool into a command runner.

An ``exec.allow`` pattern such as ``git *`` or ``find *`` says "this tool, any arguments", but
some arguments make the tool run any program: ``git -c alias.x='!cmd' x``, ``find -exec``,
``tar --to-command``, ``python -c``. ``escape_hatch(argv)`` names such a form, and the checker
then holds the command for approval even when a pattern matches it.

Invariants (each fails towards "needs approval"):
- A tool in the table with any argument the checker could not reduce to a literal (an
  expansion, a glob) is refused: its value could be one of the forms below.
- Long options are refused by any prefix of a denied name (GNU getopt and git's
  parse-options accept unambiguous abbreviations: ``--to-c`` is ``--to-command``).
- Short options are refused wherever the letter appears in a ``-xyz`` cluster, even where it
  would be the value of an earlier option (over-refusing is the safe side).
- The sed and awk program checks accept only what they can read: a script they cannot parse
  is refused (sed's reader and its invariants: ``corral.tools._sed``).

Not covered: what a tool does because of files the agent can write (``.git/config`` aliases,
pagers, hooks and fsmonitor, a Makefile, ``conftest.py``, a script given to an interpreter);
the sandbox bounds those.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from corral.tools._sed import sed_hatch

__all__ = ["escape_hatch"]


class _Spec(NamedTuple):
    short: str = ""                      # denied letters in a -cluster
    long: tuple[str, ...] = ()           # denied --long options (and their prefixes)
    words: tuple[str, ...] = ()          # denied whole arguments (single-dash long options)
    prefixes: tuple[str, ...] = ()       # denied argument prefixes (vim's +cmd)
    check: Callable[[list[str]], str | None] | None = None


def _long_hit(arg: str, names: Sequence[str]) -> str | None:
    if not arg.startswith("--") or arg == "--":
        return None
    given = arg[2:].split("=", 1)[0]
    for name in names:
        if name.startswith(given):
            return "--" + name
    return None


def _short_hit(arg: str, letters: str) -> str | None:
    if not arg.startswith("-") or arg.startswith("--") or len(arg) < 2:
        return None
    for letter in arg[1:]:
        if letter in letters:
            return "-" + letter
    return None


def _generic(spec: _Spec, args: list[str], *, first_is_cluster: bool = False) -> str | None:
    for index, arg in enumerate(args):
        if arg in spec.words:
            return arg
        hit = _long_hit(arg, spec.long) or _short_hit(arg, spec.short)
        if hit is None and first_is_cluster and index == 0 and not arg.startswith("-"):
            hit = _short_hit("-" + arg, spec.short)  # tar's old style: `tar xIf prog a`
        if hit is None and any(arg.startswith(p) for p in spec.prefixes):
            hit = arg
        if hit is not None:
            return hit
    return None


# -- git ---------------------------------------------------------------------------------------

_GIT_GLOBAL_WITH_VALUE = frozenset({
    "-C", "--git-dir", "--work-tree", "--namespace", "--super-prefix", "--list-cmds",
    "--attr-source",
})
# Options of any subcommand that name a program to run.
_GIT_LONG = ("upload-pack", "receive-pack", "exec", "ext-diff", "extcmd",
             "open-files-in-pager", "template", "sendmail-cmd", "smtp-server", "to-cmd",
             "cc-cmd", "header-cmd", "httpd")
_GIT_SHORT = {"clone": "uc", "ls-remote": "u", "archive": "u", "rebase": "x",
              "difftool": "x", "grep": "O"}
_GIT_CONFIG_READS = frozenset({
    "-l", "--list", "--get", "--get-all", "--get-regexp", "--get-urlmatch", "--get-color",
    "--get-colorbool", "get", "list",
})
_GIT_CONFIG_WRITES = ("--add", "--replace-all", "--unset", "--rename-section",
                      "--remove-section", "--edit", "-e", "set", "unset", "edit",
                      "rename-section", "remove-section")


def _git(args: list[str]) -> str | None:
    index = 0
    while index < len(args) and args[index].startswith("-"):
        opt = args[index]
        if opt.startswith("-c") or opt.startswith("--config-env"):
            return f"git {opt.split('=', 1)[0]} (sets any config: aliases, pagers, ssh command)"
        if opt.startswith("--exec-path="):
            return "git --exec-path= (runs git's subcommands from another directory)"
        index += 2 if opt in _GIT_GLOBAL_WITH_VALUE else 1
    if index >= len(args):
        return None
    sub, rest = args[index], args[index + 1:]
    if sub in ("filter-branch", "filter-repo"):
        return f"git {sub} (its filters are shell commands)"
    if (sub, rest[:1]) in (("bisect", ["run"]), ("submodule", ["foreach"])):
        return f"git {sub} {rest[0]} (runs a command)"
    if sub == "config":
        reads = any(a in _GIT_CONFIG_READS for a in rest)
        writes = any(a.split("=", 1)[0] in _GIT_CONFIG_WRITES for a in rest)
        if writes or not reads:
            return "git config without --get/--list (a config value can name a program to run)"
    hit = _generic(_Spec(short=_GIT_SHORT.get(sub, ""), long=_GIT_LONG), rest)
    if hit is None and sub == "clone":
        hit = _long_hit_any(rest, ("config",))
    return f"git {sub} {hit}" if hit is not None else None


def _long_hit_any(args: list[str], names: Sequence[str]) -> str | None:
    for arg in args:
        hit = _long_hit(arg, names)
        if hit is not None:
            return hit
    return None


# -- awk ---------------------------------------------------------------------------------------

_AWK_RUNNERS = re.compile(r"system|getline|\||@load|@include")


def _awk(args: list[str]) -> str | None:
    # Every argument is searched, not only the program: which one is the program depends on
    # options this check would otherwise have to parse exactly.
    for arg in args:
        if arg[:2] in ("-f", "-E", "-i", "-l") or _long_hit(arg, (
                "file", "exec", "include", "load")):
            return f"awk {arg} (a program the checker cannot see)"
        match = _AWK_RUNNERS.search(arg)
        if match is not None:
            return f"awk {match.group(0)!r} (runs commands)"
    return None


# -- make --------------------------------------------------------------------------------------


def _make(args: list[str]) -> str | None:
    hit = _generic(_Spec(short="E", long=("eval",)), args)
    if hit is not None:
        return f"make {hit}"
    for arg in args:
        if "$" in arg:
            return "make with a '$' in an argument (a variable definition can run $(shell ...))"
    return None


_PYTHON = re.compile(r"^(?:python|pypy)[0-9.]*$")
_TABLE: dict[str, _Spec] = {
    "find": _Spec(words=("-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint",
                         "-fprint0", "-fprintf", "-fls")),
    "sort": _Spec(long=("compress-program",)),
    "split": _Spec(long=("filter",)),
    "install": _Spec(long=("strip-program",)),
    "tar": _Spec(short="IF", long=("to-command", "checkpoint-action", "use-compress-program",
                                   "info-script", "new-volume-script", "rsh-command",
                                   "rmt-command")),
    "rsync": _Spec(short="e", long=("rsh", "rsync-path")),
    "ssh": _Spec(short="oF"),
    "scp": _Spec(short="oFS"),
    "sftp": _Spec(short="oFSD"),
    "zip": _Spec(long=("unzip-command",), prefixes=("-TT",)),
    "man": _Spec(short="PH", long=("pager", "html")),
    "less": _Spec(prefixes=("+",), long=("lesskey-src",)),
    "more": _Spec(prefixes=("+",)),
    "perl": _Spec(short="eEMm"),
    "ruby": _Spec(short="e"),
    "node": _Spec(short="ep", long=("eval", "print")),
    "nodejs": _Spec(short="ep", long=("eval", "print")),
    "php": _Spec(short="rBRE"),
    "lua": _Spec(short="e"),
    "luajit": _Spec(short="e"),
    "wget": _Spec(short="e", long=("execute", "use-askpass", "config")),
    "hg": _Spec(short="e", long=("config", "ssh", "remotecmd")),
    "git": _Spec(check=_git),
    "sed": _Spec(check=sed_hatch),
    "gsed": _Spec(check=sed_hatch),
    "make": _Spec(check=_make),
    "gmake": _Spec(check=_make),
    **{name: _Spec(check=_awk) for name in ("awk", "gawk", "mawk", "nawk")},
    **{name: _Spec(short="cS", long=("cmd",), prefixes=("+",))
       for name in ("vim", "vi", "nvim", "view", "vimdiff", "ex", "rvim", "gvim")},
}


def _spec(name: str) -> _Spec | None:
    if _PYTHON.match(name):
        return _Spec(short="c")
    return _TABLE.get(name)


def escape_hatch(argv: Sequence[str | None]) -> str | None:
    """Why ``argv`` (its name a basename) can run arbitrary programs, or None if it cannot
    by any form this table knows."""
    spec = _spec(argv[0] or "")
    if spec is None:
        return None
    if any(arg is None for arg in argv[1:]):
        return f"{argv[0]} with an expanded or globbed argument (it could name a program to run)"
    args = [arg for arg in argv[1:] if arg is not None]
    if spec.check is not None:
        return spec.check(args)
    hit = _generic(spec, args, first_is_cluster=argv[0] == "tar")
    return f"{argv[0]} {hit} (runs other programs)" if hit is not None else None
