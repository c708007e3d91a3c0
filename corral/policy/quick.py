"""Quick flags as a policy: --allow, --ro, --rw, --memory, --timeout and --idle.

``corral run``, ``corral mcp`` and ``corral policy resolve`` accept these for the common cases
without writing YAML. ``quick_policy`` turns them into one more policy (named ``QUICK_NAME``)
which ``corral.policy.compose`` composes with the ``-p`` policies like any other, so conflicts
are reported and the strictest limit wins exactly as between files.

Invariants:
- Every value is checked here, before anything is created: a bad one is a ``PolicyError`` of
  one line naming the flag and the value (``corral run`` exits 125 with it).
- Each rule and value carries the flag that made it as its origin (``--allow example.com``),
  never a file:line, so ``policy resolve``, denials and conflicts name the flag.
- ``--allow HOST[:PORT]`` is one ``inspect`` rule (ports 80 and 443 without a port): traffic
  is decided per request and audited, no credential is injected. An IP literal given this way
  may be a private address (``allow_private``: the user named it); a name never resolves to one.
- Paths are made absolute against the current directory (``~`` is the invoking user's home).
  ``--ro`` must exist; ``--rw`` must be a directory (the sandbox refuses system trees and
  hidden paths as for a workspace).
- No pydantic, no YAML: ``corral run`` builds this on its launch path.
"""

# No ``from __future__ import annotations`` here: a NamedTuple compiles each string annotation
# into a ForwardRef when its class is made, ~0.1 ms a field on every corral run.

import os
from pathlib import Path
from typing import Any, NamedTuple

from corral.policy.errors import PolicyError
from corral.policy.types import BudgetEntry, CredentialBinding, Origin, Rule

__all__ = ["QUICK_NAME", "QuickFlags", "QuickPolicy", "quick_policy"]

QUICK_NAME = "(command line)"  # cannot be a file policy's name, so never a duplicate
_DEFAULT_PORTS = frozenset({80, 443})


class QuickFlags(NamedTuple):
    allow: tuple[str, ...] = ()
    ro: tuple[str, ...] = ()
    rw: tuple[str, ...] = ()
    memory: str | None = None
    timeout: str | None = None
    idle: str | None = None

    def given(self) -> bool:
        return any(self)


class QuickPolicy(NamedTuple):
    """The shape ``compose`` reads from a loaded policy file."""

    name: str
    description: str
    source: str
    rules: tuple[Rule, ...]
    credentials: dict[str, CredentialBinding]
    settings: dict[str, tuple[Any, Origin]]
    lists: dict[str, tuple[tuple[Any, Origin], ...]]
    budgets: tuple[BudgetEntry, ...] = ()  # no flag sets one; compose reads every policy's


def _bad(flag: str, value: str, why: str) -> PolicyError:
    return PolicyError([f"{flag} {value!r}: {why}"])


def split_host_port(value: str) -> tuple[str, frozenset[int]]:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT``; a bare IPv6 literal has no port."""
    host, port = value, None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("expected [IPv6] or [IPv6]:PORT")
        port = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, port = value.split(":")
    if port is None:
        return host, _DEFAULT_PORTS
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return host, frozenset({int(port)})


def _allow(value: str) -> Rule:
    from corral.policy.hosts import normalize_pattern

    try:
        host, ports = split_host_port(value)
        pattern = normalize_pattern(host)
    except ValueError as err:
        raise _bad("--allow", value, f"{err} (expected HOST or HOST:PORT, e.g. "
                   "api.example.com:443)") from None
    import ipaddress

    try:
        literal = ipaddress.ip_address(pattern)  # a named address is given, so meant
    except ValueError:
        literal = None
    return Rule(host=pattern, ports=ports, action="inspect", origin=Origin(f"--allow {value}", 0),
                policy=QUICK_NAME, allow_private=literal is not None)


def _home() -> str:
    """The invoking user's home (``SUDO_UID``'s under sudo), for a leading ``~``."""
    import pwd

    try:
        return pwd.getpwuid(int(os.environ.get("SUDO_UID", os.getuid()))).pw_dir
    except (KeyError, ValueError):
        return os.path.expanduser("~")


def _path(flag: str, value: str) -> Path:
    if not value.strip() or "\0" in value:
        raise _bad(flag, value, "expected a path")
    text = _home() + value[1:] if value == "~" or value.startswith("~/") else value
    path = Path(os.path.abspath(text))
    if flag == "--rw" and not path.is_dir():
        raise _bad(flag, value, "no such directory" if not path.exists() else "not a directory")
    if not path.exists():
        raise _bad(flag, value, "no such file or directory")
    return path


def quick_policy(flags: QuickFlags) -> QuickPolicy:
    """The flags as one policy; ``PolicyError`` (one line) for the first bad value."""
    from corral.policy.units import parse_duration, parse_size

    rules = tuple(_allow(v) for v in flags.allow)
    settings: dict[str, tuple[Any, Origin]] = {}
    for flag, key, value in (("--memory", "limits.memory", flags.memory),
                             ("--timeout", "limits.wall", flags.timeout),
                             ("--idle", "limits.idle", flags.idle)):
        if value is None:
            continue
        try:
            parsed = parse_size(value) if key == "limits.memory" else parse_duration(value)
        except ValueError as err:
            raise _bad(flag, value, str(err)) from None
        settings[key] = (parsed, Origin(f"{flag} {value}", 0))
    lists = {
        "files.read": tuple((_path("--ro", v), Origin(f"--ro {v}", 0)) for v in flags.ro),
        "files.write": tuple((_path("--rw", v), Origin(f"--rw {v}", 0)) for v in flags.rw),
    }
    both = {p for p, _ in lists["files.read"]} & {p for p, _ in lists["files.write"]}
    if both:
        path = sorted(both)[0]
        raise _bad("--ro", str(path), "also given as --rw; give it once")
    return QuickPolicy(QUICK_NAME, "flags given on the command line", "command line", rules, {},
                       settings, lists)
