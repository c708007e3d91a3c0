"""Method-override headers: a request is decided under every method it may be read as.

Servers behind frameworks that honour ``X-HTTP-Method-Override``, ``X-HTTP-Method`` or
``X-Method-Override`` act on the method those name, not on the request line. If the proxy
decided only the request line, ``POST`` + ``X-HTTP-Method-Override: DELETE`` would pass a
``deny methods: [DELETE]`` rule with the credential injected.

Invariants:
- Override headers are recognised by name in any case, ``_`` read as ``-`` (CGI-style servers
  fold both into the same variable), every occurrence and every comma-separated item counted.
  An item that is not a method token is a 400.
- The request is matched under its own method and under each overriding method. If any
  reading is denied, the request is denied, naming that rule and the header.
- When the request-line decision injects a credential, every reading must be allowed by that
  same rule; otherwise it is refused (403) naming both rules and the header.
- A request without such headers pays a substring search over its joined header names: the
  request loop (``http1``) calls in here only when one contains "method".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from corral.policy.types import Decision
from corral.proxy import decide
from corral.proxy.request_head import BadRequest

__all__ = ["NAMES", "decide_overrides", "readings"]

NAMES = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})
_METHOD = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # RFC 9110 token


def readings(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """(header name as sent, upper-cased method) for every override item; 400 if not a token."""
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if b"method" not in name or name.replace(b"_", b"-") not in NAMES:
            continue
        for item in value.split(b","):
            method = item.strip(b" \t")
            if _METHOD.fullmatch(method) is None:
                raise BadRequest(f"{name.decode('latin-1')}: {value!r} does not name a method")
            out.append((name.decode("ascii"), method.decode("ascii").upper()))
    return out


def decide_overrides(
    policy: Any,
    host: str,
    port: int,
    method: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]],
    decision: Decision,
) -> Decision:
    """``decision`` (an allow for the request line) if every override reading agrees with it;
    otherwise a deny naming the rule and the header."""
    seen = {method.upper()}
    for header, other in readings(headers):
        if other in seen:
            continue
        seen.add(other)
        reading = decide.request(policy, host, port, other, path)
        if reading.action == "deny":
            return Decision(
                "deny",
                reading.rule,
                f"{header}: {other} makes this a {other} {path}, which the policy denies: "
                f"{reading.message.strip() or 'denied'} (rule: {reading.origin})",
            )
        if decision.credential is not None and reading.rule != decision.rule:
            return Decision(
                "deny",
                decision.rule,
                f"{header}: {other} makes this a {other} {path}, allowed by {reading.origin}, "
                f"not by {decision.origin}, which injects the credential; send the request "
                "as that method instead",
            )
    return decision
