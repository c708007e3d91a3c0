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
    "agent_name", "approval_id", "audit_ident", "choice", "client_id", "db_path", "duration",
    "email",
    "endpoint", "event_types", "http_method", "ledger_head", "listen", "origins",
    "resource_name", "role",
    "sandbox_id", "server_url", "usd", "when",
]

_SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # as corral.audit.events
_APPROVAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TCHAR = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # RFC 9110 token
# As corral server's API accepts them (corral/server/api/schemas.py).
_RESOURCE = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_AGENT = re.compile(r"[a-z0-9][a-z0-9._-]{0,49}(/[a-z0-9][a-z0-9._-]{0,49})?")
_EMAIL = re.compile(r"[^@\s/]{1,200}@[^@\s/]{1,200}")
_DURATION = re.compile(r"[1-9][0-9]{0,5}[smhd]")


def _bad(message: str) -> typer.BadParameter:
    return typer.BadParameter(message)


def resource_name(value: str | None) -> str | None:
    """A team, project or token name on corral server."""
    if value is not None and not _RESOURCE.fullmatch(value):
        raise _bad(f"{value!r} is not a name (lower-case letters, digits, '.', '_', '-')")
    return value


def agent_name(value: str | None) -> str | None:
    if value is not None and not _AGENT.fullmatch(value):
        raise _bad(f"{value!r} is not an agent name (e.g. release-bot or alice/claude)")
    return value


def email(value: str | None) -> str | None:
    if value is not None and not _EMAIL.fullmatch(value):
        raise _bad(f"{value!r} is not an email address")
    return value


def role(value: str | None) -> str | None:
    if value is not None and value not in ("owner", "admin", "member", "viewer"):
        raise _bad(f"{value!r}: one of owner, admin, member, viewer")
    return value


def duration(value: str | None) -> str | None:
    if value is not None and not _DURATION.fullmatch(value):
        raise _bad(f"{value!r} is not a duration such as 12h or 90d")
    return value


def client_id(value: str | None) -> str | None:
    """An OAuth client id: visible ASCII, no spaces (RFC 6749 A.1 allows VSCHAR)."""
    if value is not None and not re.fullmatch(r"[\x21-\x7e]{1,255}", value):
        raise _bad(f"{value!r} is not a client id (visible ASCII characters, no spaces)")
    return value


def listen(value: str | None) -> str | None:
    """HOST:PORT for a server to listen on ([::1]:8080 for IPv6)."""
    if value is None:
        return value
    host, _, port = value.rpartition(":")
    if (not host or not port.isdigit() or not 0 < int(port) < 65536
            or not re.fullmatch(r"\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.-]+", host)):
        raise _bad(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    return value


def server_url(value: str | None) -> str | None:
    """An http(s) URL with a host; plain http only on loopback (as the client enforces)."""
    if value is None:
        return value
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise _bad(f"{value!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise _bad(f"{value!r} is not an http(s) URL such as https://corral.example.com")
    return value


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


def usd(value: float | None) -> float | None:
    """An amount of money in USD, as budgets take it: 0 to 1,000,000, at most micro-dollars."""
    if value is None:
        return None
    if not 0 <= value <= 1_000_000:  # also refuses nan and inf
        raise _bad(f"{value!r}: an amount in USD from 0 to 1000000")
    return value
