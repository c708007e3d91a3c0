"""Typer callbacks that validate option values at parse time, before a command touches state.

Invariant: each raises ``typer.BadParameter`` with a one-line reason; typer names the option and
``corral.cli.app`` prints one line and exits 2. Values that have a format (ids, URLs, methods,
event types, durations) are checked here, so a typo is refused instead of matching nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import typer

from corral.errors import CorralError

__all__ = [
    "approval_id", "audit_ident", "choice", "db_path", "endpoint", "event_types", "http_method",
    "ledger_head", "origins", "sandbox_id", "when",
]

_SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # as corral.audit.events
_APPROVAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TCHAR = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # RFC 9110 token


def _bad(message: str) -> typer.BadParameter:
    return typer.BadParameter(message)


def sandbox_id(value: str | None) -> str | None:
    if value is not None and not _SANDBOX_ID.fullmatch(value):
        raise _bad(f"{value!r} is not a sandbox id")
    return value


def audit_ident(value: str) -> str:
    if not value.isdigit() and not _SANDBOX_ID.fullmatch(value):
        raise _bad(f"{value!r} is neither a sandbox id nor an event id")
    return value


def approval_id(value: str) -> str:
    if not _APPROVAL_ID.fullmatch(value):
        raise _bad(f"{value!r} is not an approval id (see `corral approvals list`)")
    return value


def when(value: str | None) -> str | None:
    """A duration ago or an ISO date, as ``corral.audit.query.parse_time`` reads it."""
    if value is not None:
        from corral.audit.query import parse_time

        try:
            parse_time(value)
        except CorralError as err:
            raise _bad(f"{value!r}: {str(err).split(': ', 1)[-1]}") from None
    return value


def event_types(values: list[str] | None) -> list[str] | None:
    """Known event types, or ``PREFIX.*`` over a known prefix (``proxy.*``)."""
    from corral.audit.events import EventType

    known = {t.value for t in EventType}
    prefixes = {t.split(".", 1)[0] for t in known}
    for value in values or ():
        if value not in known and not (value.endswith(".*") and value[:-2] in prefixes):
            shown = ", ".join(sorted(prefixes))
            raise _bad(f"unknown event type {value!r} (a type like proxy.deny, or PREFIX.* "
                       f"with PREFIX one of: {shown})")
    return values


def db_path(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise _bad(f"{value}: no such audit database")
    return value


def ledger_head(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
        raise _bad("expected the 64 hex digits `corral audit head` printed")
    return value


def endpoint(value: str | None) -> str | None:
    if value is not None:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise _bad(f"{value!r}: bad URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
            raise _bad(f"{value!r}: expected an http(s) URL like http://localhost:4318/v1/logs")
    return value


def http_method(value: str) -> str:
    if not _TCHAR.fullmatch(value):
        raise _bad(f"{value!r} is not an HTTP method (a token like GET or PROPFIND)")
    return value


def origins(values: list[str] | None) -> list[str] | None:
    """``scheme://host[:port]``, nothing after it, as browsers send ``Origin``."""
    for value in values or ():
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise _bad(f"{value!r}: bad origin") from None
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path
                or parts.query or parts.fragment or parts.username or " " in value):
            raise _bad(f"{value!r}: expected an origin like http://localhost:3000")
    return values


def choice(*allowed: str) -> Callable[[str | None], str | None]:
    """A callback accepting only ``allowed`` (typer's own choices need an Enum)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise _bad(f"{value!r}: use one of {', '.join(allowed)}")
        return value

    return check
