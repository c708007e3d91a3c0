"""The agent's request head, checked before anything is decided: size, framing, target, Host.

``agent_parser`` parses the head (and bounds it by ``MAX_HEADER_BYTES``, refusing obs-fold);
this module refuses conflicting framing once more (RFC 9112 §6.3) and works out where a request
is going.

Invariants:
- A request carrying both Content-Length and Transfer-Encoding is refused, never re-framed.
- A path with dot-segments (after percent-decoding) is refused, so the path the policy matched
  is the path the upstream serves.
- The explicit proxy takes only absolute ``http://`` URLs. A pinned connection (inside TLS or
  transparently captured) always goes to its pinned host and port, whatever the target says.
- A Host header (or the authority of an absolute-form target on a pinned connection) must name
  the target's host and port, else ``HostMismatch``, which callers answer as a deny. On a
  pinned connection a Host value once accepted is not parsed again (same bytes, same answer).
- Host names are compared lower-case, without a trailing dot, IDNA-encoded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol
from urllib.parse import unquote, urlsplit

__all__ = [
    "MAX_HEADER_BYTES",
    "BadRequest",
    "HostMismatch",
    "Pinned",
    "RequestHead",
    "Target",
    "authority",
    "check_framing",
    "normalise_host",
    "request_target",
]

MAX_HEADER_BYTES = 64 * 1024
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


class BadRequest(Exception):
    """A request the proxy answers with 400 and then closes the connection."""


class RequestHead(Protocol):
    """What this module reads of a parsed request (``agent_parser.Request``, ``h11.Request``)."""

    @property
    def method(self) -> bytes: ...

    @property
    def target(self) -> bytes: ...

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]: ...


class HostMismatch(Exception):
    """The Host header names another destination than the request goes to (answered 403)."""


@dataclass(frozen=True, slots=True)
class Pinned:
    """The one destination a connection is bound to (CONNECT target, SNI, captured address)."""

    host: str
    port: int
    tls: bool


class Target(NamedTuple):
    """Where a request goes: host, port, whether over TLS, and its origin-form target."""

    host: str
    port: int
    tls: bool
    origin: str

    @property
    def path(self) -> str:
        return self.origin.split("?", 1)[0]

    @property
    def authority(self) -> str:
        return authority(self.host, self.port, self.tls)


def normalise_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise BadRequest(f"invalid host name {host!r}") from None


def authority(host: str, port: int, tls: bool) -> str:
    """``host[:port]`` as a Host header writes it (default port left out, IPv6 bracketed)."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == (443 if tls else 80) else f"{shown}:{port}"


def check_framing(req: RequestHead, headers: Sequence[tuple[bytes, bytes]] | None = None) -> None:
    """Refuse a request framed two ways (the classic smuggling shape, RFC 9112 §6.3).

    ``headers``: ``req.headers`` already listed by the caller.
    """
    names = {n for n, _ in (req.headers if headers is None else headers)}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise BadRequest("both Content-Length and Transfer-Encoding")


def request_target(
    req: RequestHead,
    pinned: Pinned | None,
    known_hosts: set[bytes],
    headers: Sequence[tuple[bytes, bytes]] | None = None,
) -> Target:
    """The request's destination on this connection; ``known_hosts`` caches good Host values.

    Raises ``BadRequest``, ``HostMismatch`` or ``UnicodeError`` (non-ASCII target or Host).
    ``headers``: as for ``check_framing``.
    """
    raw = req.target.decode("ascii", "strict")
    listed = req.headers if headers is None else headers
    host_header = next((v for n, v in listed if n == b"host"), None)
    if pinned is None:
        parts = urlsplit(raw)
        if parts.scheme != "http" or not parts.hostname:
            raise BadRequest("a proxy request needs an absolute http:// URL (or CONNECT)")
        host, port, tls = normalise_host(parts.hostname), parts.port or 80, False
        origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    else:
        if not raw.startswith("/"):
            if raw == "*" and req.method == b"OPTIONS":
                raw = "*"
            else:
                parts = urlsplit(raw)
                if not parts.hostname:
                    raise BadRequest("request target must be origin-form")
                raw = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                host_header = parts.netloc.encode()
        host, port, tls = pinned.host, pinned.port, pinned.tls
        origin = raw
    if host_header is not None and host_header not in known_hosts:
        parts = urlsplit("//" + host_header.decode("ascii", "strict"))
        named = normalise_host(parts.hostname or "")
        if named != host or (parts.port is not None and parts.port != port):
            raise HostMismatch(
                f"Host header {host_header.decode()!r} does not match the connection's "
                f"target {authority(host, port, tls)}"
            )
        if pinned is not None:
            known_hosts.add(host_header)  # same value again on this connection: known good
    target = Target(host, port, tls, origin)
    if _DOT_SEGMENT.search(unquote(target.path)):
        raise BadRequest("dot-segments in the request path")
    return target
