"""Policy decisions for the proxy, failing closed.

Invariants:
- Any exception raised while deciding (a bug in a matcher, a malformed name) yields a deny
  with rule ``None``; the proxy never allows because something went wrong.
- The policy object is duck-typed (``decide_connect``, ``decide_request``, ``credentials_for``)
  so that the proxy depends only on ``corral.policy.types``.
"""

from __future__ import annotations

from typing import Any, Protocol

from corral.policy.types import CredentialBinding, Decision

__all__ = ["Policy", "binding_for", "connect", "failed", "request"]


class Policy(Protocol):
    def decide_connect(self, host: str, port: int) -> Decision: ...

    def decide_request(self, host: str, port: int, method: str, path: str) -> Decision: ...

    def credentials_for(self, decision: Decision) -> CredentialBinding | None: ...


def failed(err: BaseException) -> Decision:
    return Decision(
        "deny",
        None,
        f"corral denied this because the policy check itself failed ({type(err).__name__}); "
        "the proxy fails closed. Report this as a corral bug.",
    )


def connect(policy: Any, host: str, port: int) -> Decision:
    try:
        decision = policy.decide_connect(host, port)
        if not isinstance(decision, Decision):
            raise TypeError("decide_connect returned a non-Decision")
        return decision
    except Exception as err:
        return failed(err)


def request(policy: Any, host: str, port: int, method: str, path: str) -> Decision:
    try:
        decision = policy.decide_request(host, port, method, path)
        if not isinstance(decision, Decision):
            raise TypeError("decide_request returned a non-Decision")
        return decision
    except Exception as err:
        return failed(err)


def binding_for(policy: Any, decision: Decision) -> CredentialBinding | None:
    try:
        binding = policy.credentials_for(decision)
    except Exception:
        return None
    return binding if isinstance(binding, CredentialBinding) else None
