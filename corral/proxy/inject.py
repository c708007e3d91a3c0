"""Credential injection: the one place a secret meets a request.

``plan`` decides whether a request gets its rule's credential; ``apply`` puts it in (a header,
or an AWS SigV4 signature over the decided target) and records ``credential.inject``.

Invariants:
- Injection happens only when all hold: the request's decision rule names the credential, the
  binding exists and its secret was resolved, the method is not TRACE (TRACE would echo the
  secret back into the sandbox), and the connection upstream is TLS unless the binding says
  ``plaintext: true``.
- Whatever the agent put in the binding's header (every occurrence, any case) is removed first;
  the formatted secret is then set once.
- An AWS request is re-signed for the decided target; its body is buffered (bounded by
  ``sigv4.MAX_BUFFERED_BODY``) only when the signature needs the body's hash.
- ``credential.inject`` is durable (the relay acknowledged it) before ``apply`` returns the
  headers, so a secret never leaves without its record.
- Nothing here logs or returns the secret except inside the rebuilt header list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.policy.types import CredentialBinding, Decision
from corral.proxy import sigv4

if TYPE_CHECKING:
    from corral.proxy.agent import AgentConnection
    from corral.proxy.request_head import Target

__all__ = ["Injection", "InjectionError", "apply", "plan", "read_body", "set_header"]

Headers = list[tuple[bytes, bytes]]

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


async def read_body(agent: AgentConnection, limit: int) -> list[bytes]:
    """The whole request body, for a signature over its hash; over ``limit`` is refused."""
    chunks: list[bytes] = []
    size = 0
    while (chunk := await agent.next_body_chunk()) is not None:
        size += len(chunk)
        if size > limit:
            raise sigv4.SigV4Error(
                f"body over {limit} bytes needs x-amz-content-sha256 from the client"
            )
        chunks.append(chunk)
    return chunks


async def apply(
    agent: AgentConnection,
    injection: Injection,
    decision: Decision,
    target: Target,
    origin: str,
    method: str,
    headers: Headers,
) -> tuple[Headers, list[bytes] | None]:
    """The headers carrying the credential, and the body if it had to be read for an AWS
    signature; returns once ``credential.inject`` is durable."""
    binding = injection.binding
    buffered: list[bytes] | None = None
    if binding.kind == "aws":
        body = None
        if sigv4.needs_body(headers):
            buffered = await read_body(agent, sigv4.MAX_BUFFERED_BODY)
            body = b"".join(buffered)
        url = f"{'https' if target.tls else 'http'}://{target.authority}{origin}"
        headers = sigv4.resign(method, url, headers, injection.secret, body)
    else:
        headers = set_header(headers, injection)
    await agent.ctx.audit.emit(
        "credential.inject",
        binding=binding.name,
        host=target.host,
        header=binding.header if binding.kind == "header" else "Authorization",
        rule=decision.origin,
    )
    return headers, buffered
