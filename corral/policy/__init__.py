"""The policy engine: load, validate, compose and compile egress/exec/files/limits policies.

Public API (DESIGN "Policy language")::

    rp = resolve(["builtin:github", "./team.yaml"])   # PolicyError on bad input or conflicts
    rp.decide_connect(host, port) / rp.decide_request(host, port, method, path) -> Decision
    rp.credentials_for(decision) -> CredentialBinding | None

Importing this package does not import pydantic or YAML: those load only when a policy has to
be parsed (the compiled form is cached), so ``corral run`` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.policy.api import resolve
    from corral.policy.builtin import builtin_names, describe_builtins
    from corral.policy.errors import PolicyError
    from corral.policy.resolved import ResolvedPolicy
    from corral.policy.types import (
        Action,
        CredentialBinding,
        Decision,
        ExecConfig,
        FilesConfig,
        Limits,
        Origin,
        Rule,
    )

__all__ = [
    "Action",
    "CredentialBinding",
    "Decision",
    "ExecConfig",
    "FilesConfig",
    "Limits",
    "Origin",
    "PolicyError",
    "ResolvedPolicy",
    "Rule",
    "builtin_names",
    "describe_builtins",
    "resolve",
]

# Exports load on first use (PEP 562): ``corral run`` imports ``corral.policy.types`` on every
# launch, and importing the matcher and resolver with it cost ~20-40 ms there.
_HOME = {
    "resolve": "corral.policy.api",
    "builtin_names": "corral.policy.builtin",
    "describe_builtins": "corral.policy.builtin",
    "PolicyError": "corral.policy.errors",
    "ResolvedPolicy": "corral.policy.resolved",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    if name in __all__:
        return getattr(importlib.import_module("corral.policy.types"), name)
    raise AttributeError(f"module 'corral.policy' has no attribute {name!r}")
