"""Resolve every secret a policy binds, on the host, at sandbox start.

Returns ``{binding name: value}`` for header bindings and
``{binding name: {"access_key_id", "secret_access_key"[, "session_token"]}}`` for AWS ones:
exactly what ``corral.runtime.proxyproc.ProxyProcess.configure`` hands the proxy child.

Invariant: a missing or unreadable secret aborts the run with one line naming the binding and
where it is defined; the value is never part of any message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.credentials.sources import SecretError, read_source
from corral.credentials.store import CredentialStore
from corral.errors import UserInputError
from corral.policy.types import CredentialBinding

__all__ = ["resolve_binding", "resolve_secrets"]


def resolve_binding(
    binding: CredentialBinding, store: CredentialStore | None = None
) -> str | dict[str, str]:
    def read(spec: str | None, what: str) -> str:
        if not spec:
            raise UserInputError(f"credential {binding.name!r} ({binding.origin}): no {what}")
        try:
            return read_source(spec, trusted=binding.trusted_source, store=store)
        except SecretError as err:
            raise UserInputError(
                f"credential {binding.name!r} ({binding.origin}): {err}"
            ) from None

    if binding.kind == "aws":
        keys = {
            "access_key_id": read(binding.aws_access_key_id, "access_key_id"),
            "secret_access_key": read(binding.aws_secret_access_key, "secret_access_key"),
        }
        if binding.aws_session_token:
            keys["session_token"] = read(binding.aws_session_token, "session_token")
        return keys
    return read(binding.secret, "secret")


def resolve_secrets(
    policy: Any, store: CredentialStore | None = None
) -> dict[str, str | dict[str, str]]:
    bindings: Mapping[str, CredentialBinding] = getattr(policy, "credentials", {}) or {}
    # A ``server:`` secret stays on corral server (its relay injects it): never read here.
    return {name: resolve_binding(b, store) for name, b in sorted(bindings.items())
            if not (b.secret or "").startswith("server:")}
