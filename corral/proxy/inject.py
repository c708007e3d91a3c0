"""Credential injection: the one place a secret meets a request.

Invariants:
- Injection happens only when all hold: the request's decision rule names the credential, the
  binding exists and its secret was resolved, the method is not TRACE (TRACE would echo the
  secret back into the sandbox), and the connection upstream is TLS unless the binding says
  ``plaintext: true``.
- Whatever the agent put in the binding's header (every occurrence, any case) is removed first;
  the formatted secret is then set once.
- Nothing here logs or returns the secret except inside the rebuilt header list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from corral.policy.types import CredentialBinding, Decision

__all__ = ["Injection", "InjectionError", "plan", "set_header"]

_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class InjectionError(Exception):
    """The formatted credential cannot be a header value (a line break, a control byte)."""


@dataclass(frozen=True, slots=True)
class Injection:
    binding: CredentialBinding
    secret: Mapping[str, str]


def plan(
    decision: Decision,
    binding: CredentialBinding | None,
    secrets: Mapping[str, Mapping[str, str]],
    *,
    method: str,
    tls: bool,
) -> Injection | None:
    """The injection this request gets, or None."""
    rule = decision.rule
    if decision.action != "inspect" or rule is None or rule.credential is None:
        return None
    if binding is None or binding.name != rule.credential:
        return None
    if method.upper() == "TRACE":
        return None
    if not tls and not binding.plaintext:
        return None
    secret = secrets.get(binding.name)
    if not secret:
        return None
    return Injection(binding, secret)


def set_header(
    headers: list[tuple[bytes, bytes]], injection: Injection
) -> list[tuple[bytes, bytes]]:
    binding = injection.binding
    name = binding.header.encode("latin-1")
    value = binding.format.replace("{secret}", injection.secret["secret"]).strip(" \t")
    # The value bypasses h11's own validation downstream, so check it here (never echo it).
    if _FORBIDDEN.search(value):
        raise InjectionError(
            f"credential {binding.name!r} contains a line break or control character; "
            "fix the stored secret"
        )
    kept = [(n, v) for n, v in headers if n.lower() != name.lower()]
    kept.append((name, value.encode("latin-1")))
    return kept
