"""The 403 an agent sees when the policy (or a destination check) says no.

Invariants:
- The body is plain text naming the rule (file:line) or "default deny" and what to change;
  the same text goes into the audit event. It never contains secrets: it is built only from
  the decision and the request line.
- ``X-Corral-Decision`` carries ``deny`` and the rule's origin, machine-readable.
"""

from __future__ import annotations

from corral.policy.types import Decision

__all__ = ["deny_text", "refusal", "response_headers"]


def refusal(decision: Decision, message: str) -> Decision:
    """A deny that keeps the rule that would have allowed the request (for file:line)."""
    return Decision("deny", decision.rule, message)


def deny_text(decision: Decision, what: str) -> str:
    message = decision.message.strip() or "denied by policy"
    origin = decision.origin
    if origin not in message:
        message = f"{message} (rule: {origin})"
    return f"corral: {what} denied.\n{message}\n"


def response_headers(decision: Decision, body: bytes) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("X-Corral-Decision", f"deny; rule={decision.origin}"),
        ("Connection", "close"),
    ]
