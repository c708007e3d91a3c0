"""The 403 an agent sees when the policy (or a destination check) says no.

Invariants:
- The body is plain text naming the rule (file:line) or "default deny" and what to change;
  the same text goes into the audit event. It never contains secrets: it is built only from
  the decision and the request line.
- ``X-Corral-Decision`` carries ``deny`` and the rule's origin, machine-readable.
- The status line's reason phrase says who refused and which rule, in visible ASCII only: many
  clients show nothing else of a refused CONNECT (urllib: "Tunnel connection failed: 403
  <reason>", curl: "CONNECT tunnel failed, response 403").
"""

from __future__ import annotations

from corral.policy.types import Decision

__all__ = ["deny_text", "reason_phrase", "refusal", "response_headers"]

_PHRASE_MAX = 160


def refusal(decision: Decision, message: str) -> Decision:
    """A deny that keeps the rule that would have allowed the request (for file:line)."""
    return Decision("deny", decision.rule, message)


def deny_text(decision: Decision, what: str) -> str:
    message = decision.message.strip() or "denied by policy"
    origin = decision.origin
    if origin not in message:
        message = f"{message} (rule: {origin})"
    return f"corral: {what} denied.\n{message}\n"


def reason_phrase(decision: Decision) -> bytes:
    """``Forbidden by corral (rule p.yaml:4)``: a reason phrase (RFC 9112: tab, space, visible
    ASCII), cut to a length every client reads whole."""
    what = "Bad request" if decision.status == 400 else "Forbidden"
    phrase = f"{what} by corral ({'rule ' if decision.rule else ''}{decision.origin})"
    clean = "".join(c if " " <= c <= "~" else "?" for c in phrase)
    return clean[:_PHRASE_MAX].encode("ascii")


def response_headers(decision: Decision, body: bytes) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("X-Corral-Decision", f"deny; rule={decision.origin}"),
        ("Connection", "close"),
    ]
