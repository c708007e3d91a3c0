"""Command names that mean something to the exec allowlist checker (``corral.tools.cmdcheck``)
whatever the allow patterns say.

Invariants (each fails towards "needs approval"):
- A name in ``ALWAYS_HOLD`` (builtins that run dynamic code or change how later words are read,
  privilege and namespace tools, command runners) is held, and so is a builtin that evaluates
  array subscripts (``read``, ``printf``, ``test``, ...) when an argument holds ``[`` or an
  expansion, and any form ``corral.tools.escapes`` names.
- ``unwrap`` gives a wrapper's inner command only when every argument before it is a literal
  it can classify (an option, an ``env`` assignment, ``--``); an expanded argument or
  ``env -S`` raises ``Hold``. ``env``'s assignments are returned for the caller to put in front
  of the inner command, as prefix assignments are.
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.tools._shellwords import Hold
from corral.tools.escapes import escape_hatch

__all__ = ["ALWAYS_HOLD", "SHELLS", "WRAPPERS", "hold_always", "unwrap"]

ALWAYS_HOLD = frozenset({
    "eval", "source", ".", "alias", "unalias", "trap", "enable", "builtin", "declare", "typeset",
    "export", "readonly", "local", "unset", "set", "shopt", "hash", "fc", "history", "let",
    "coproc", "xargs", "sudo", "doas", "su", "mapfile", "readarray", "bind", "complete",
    "compgen", "function", "parallel", "watch", "flock", "chroot", "unshare", "nsenter",
    "setpriv", "runuser", "pkexec", "script", "strace", "ltrace", "gdb", "taskset", "chrt",
    "systemd-run", "expect",
})
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "rbash"})
WRAPPERS = frozenset({
    "env", "command", "exec", "nice", "nohup", "time", "timeout", "stdbuf", "setsid", "ionice",
})
# Builtins that evaluate array subscripts (and so $(...) inside a literal) in their arguments.
_SUBSCRIPT_EVAL = frozenset({"read", "printf", "test", "[", "getopts", "wait"})


def hold_always(base: str, args: Sequence[str | None]) -> None:
    """Raise ``Hold`` if command ``base`` (a basename) with ``args`` needs approval even where a
    pattern matches it."""
    if base in ALWAYS_HOLD:
        raise Hold(f"{base!r} can run dynamic code or change the shell: always needs approval")
    if base in _SUBSCRIPT_EVAL and any(a is None or "[" in a for a in args):
        raise Hold(f"{base!r} with subscripts or expansions can evaluate code")
    hatch = escape_hatch([base, *args])
    if hatch is not None:
        raise Hold(f"{hatch}: needs approval even where a pattern matches")


_WITH_VALUE = {  # a wrapper's options that take the next argument as their value
    "env": {"-u", "--unset", "-C", "--chdir"},
    "exec": {"-a"},
    "nice": {"-n", "--adjustment"},
    "timeout": {"-s", "--signal", "-k", "--kill-after"},
    "stdbuf": {"-i", "-o", "-e"},
    "ionice": {"-c", "-n", "-p", "-P", "-u"},
}


def unwrap(base: str, args: Sequence[str | None], assigned: list[str]) -> list[str | None]:
    """The inner argv of a wrapper, skipping its options; raises if it cannot tell."""
    rest = list(args)
    with_value = _WITH_VALUE.get(base, set())
    while rest:
        arg = rest[0]
        if arg is None:
            raise Hold(f"{base}: an expanded argument hides the inner command")
        if arg == "--":
            rest.pop(0)
            break
        if base == "env" and (arg.startswith(("-S", "--split-string")) or arg == "-"):
            raise Hold("env -S splits a string into a command the checker cannot see")
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
