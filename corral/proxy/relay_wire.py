"""The relay protocol between a launcher's proxy and corral server (``action: platform``).

One agent request is one HTTP/1.1 exchange with the server (over TLS unless the server is on
loopback), on a connection the proxy keeps alive:

    POST /relay/v1/{run} HTTP/1.1
    Authorization: Bearer <the run's sandbox token>
    Content-Type: application/vnd.corral.relay.v1
    Transfer-Encoding: chunked

    {"method": ..., "host": ..., "port": ..., "target": ..., "headers": [[name, value], ...]}\\n
    <the agent's request body, as it arrives>

The body starts with the *preamble*: one line of JSON (no raw newline: ``json.dumps`` escapes
them) naming the agent's request as the proxy decided it (method, host, port, target with its
query) and its end-to-end headers (latin-1 strings, hop-by-hop already dropped, Host rebuilt).
The request body follows unchanged and streams.

The answer is either the upstream's response, marked ``corral-relay: upstream`` (status,
headers and streamed body as the upstream sent them, the secret scrubbed; to a HEAD the
upstream's Content-Length travels as ``corral-relay-content-length``, and its Date always as
``corral-relay-date``, the relay's server adding a Date of its own), corral's own answer to
a metered request in the provider's error shape, marked ``corral-relay: reply`` (a budget
exhausted: the agent gets it as is), or the relay's own refusal, marked
``corral-relay-error: CODE`` with a JSON ``{"error": {"code", "message"}}`` body.

Invariants:
- The preamble is at most ``MAX_PREAMBLE`` bytes; anything else is a refusal (400).
- Headers named ``corral-relay*`` are the relay's own: the relay drops them from the upstream's
  response before marking it, so an upstream can never pass for a relay refusal or back.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

__all__ = ["CONTENT_TYPE", "ERROR", "HEAD_LENGTH", "MARK", "MAX_PREAMBLE", "PATH", "REPLY",
           "UPSTREAM_DATE", "Preamble", "PreambleError", "carry", "decode_preamble",
           "encode_preamble", "restore"]

PATH = "/relay/v1/"
CONTENT_TYPE = b"application/vnd.corral.relay.v1"
MARK = b"corral-relay"  # on a relayed upstream response: b"upstream"
REPLY = b"reply"  # MARK's value on corral's provider-shaped answer to a metered request
ERROR = b"corral-relay-error"  # on the relay's own refusal: its code
HEAD_LENGTH = b"corral-relay-content-length"  # a HEAD response's upstream Content-Length
# The upstream's Date travels renamed: the relay's HTTP server adds a Date of its own, and the
# agent must see the upstream's only (clients correct clock skew from it, e.g. SigV4's).
UPSTREAM_DATE = b"corral-relay-date"
_RESTORED = {HEAD_LENGTH: b"content-length", UPSTREAM_DATE: b"date"}


def carry(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The relay's side: the upstream response's headers a relay server would duplicate."""
    return [(UPSTREAM_DATE if n == b"date" else n, v) for n, v in headers]


def restore(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The launcher's side: the upstream's headers as it sent them, the relay's own dropped
    (its marks, and the Date its HTTP server added)."""
    return [(_RESTORED.get(n, n), v) for n, v in headers
            if n in _RESTORED or (not n.startswith(MARK) and n != b"date")]
MAX_PREAMBLE = 256 * 1024


class PreambleError(ValueError):
    """The preamble is malformed; ``str()`` says how."""


class Preamble(NamedTuple):
    method: str
    host: str
    port: int
    target: str
    headers: list[tuple[bytes, bytes]]
    tls: bool = True


def encode_preamble(method: str, host: str, port: int, target: str,
                    headers: list[tuple[bytes, bytes]], tls: bool = True) -> bytes:
    body = {"method": method, "host": host, "port": port, "tls": tls, "target": target,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > 16384:
        raise PreambleError(f"preamble: {key!r} must be a non-empty string")
    return value


def decode_preamble(line: bytes) -> Preamble:
    try:
        data = json.loads(line)
    except ValueError as err:
        raise PreambleError(f"preamble is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise PreambleError("preamble must be a JSON object")
    port = data.get("port")
    if type(port) is not int or not 1 <= port <= 65535:
        raise PreambleError("preamble: 'port' must be a port number")
    raw = data.get("headers")
    if not isinstance(raw, list):
        raise PreambleError("preamble: 'headers' must be a list of [name, value]")
    headers = []
    for item in raw:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(x, str) for x in item)):
            raise PreambleError("preamble: each header is [name, value] (strings)")
        try:
            headers.append((item[0].lower().encode("latin-1"), item[1].encode("latin-1")))
        except UnicodeEncodeError:
            raise PreambleError("preamble: header outside latin-1") from None
    target = _text(data, "target")
    if not target.startswith("/"):
        raise PreambleError("preamble: 'target' must be an origin-form path")
    tls = data.get("tls", True)
    if not isinstance(tls, bool):
        raise PreambleError("preamble: 'tls' must be true or false")
    return Preamble(_text(data, "method"), _text(data, "host").lower(), port, target, headers,
                    tls)
