"""The policy engine: load, validate, compose and compile egress/exec/files/limits policies.

Public API (DESIGN "Policy language")::

    rp = resolve(["builtin:github", "./team.yaml"])   # PolicyError on bad input or conflicts
    rp.decide_connect(host, port) / rp.decide_request(host, port, method, path) -> Decision
    rp.credentials_for(decision) -> CredentialBinding | None

Importing this package does not import pydantic or YAML: those load only when a policy has to
be parsed (the compiled form is cached), so ``corral run`` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.policy.api import resolve
    from corral.policy.builtin import builtin_names, builtin_path, describe_builtins, locate
    from corral.policy.errors import PolicyError
    from corral.policy.load import LoadedPolicy, load_policy, load_policy_text
    from corral.policy.quick import QuickFlags, QuickPolicy, quick_policy
    from corral.policy.resolved import ResolvedPolicy
    from corral.policy.types import (
        Action,
        BudgetEntry,
        CredentialBinding,
        Decision,
        ExecConfig,
        FilesConfig,
        Limits,
        Origin,
        Rule,
    )
    from corral.policy.units import parse_duration, parse_size

__all__ = [
    "Action",
    "BudgetEntry",
    "CredentialBinding",
    "Decision",
    "ExecConfig",
    "FilesConfig",
    "Limits",
    "LoadedPolicy",
    "Origin",
    "PolicyError",
    "QuickFlags",
    "QuickPolicy",
    "ResolvedPolicy",
    "Rule",
    "builtin_names",
    "builtin_path",
    "compose",  # public submodules: compose(), the YAML reader, host names (the server uses them)
    "describe_builtins",
    "hosts",
    "load_policy",
    "load_policy_text",
    "locate",
    "parse_duration",
    "parse_size",
    "quick_policy",
    "resolve",
    "yamlsrc",
]

# Exports load on first use (PEP 562): ``corral run`` imports ``corral.policy.types`` on every
# launch, and importing the matcher and resolver with it cost ~20-40 ms there.
__getattr__ = lazy_exports("corral.policy", {
    "resolve": "api",
    "builtin_names": "builtin",
    "builtin_path": "builtin",
    "locate": "builtin",
    "describe_builtins": "builtin",
    "LoadedPolicy": "load",
    "load_policy": "load",
    "load_policy_text": "load",
    "QuickFlags": "quick",
    "QuickPolicy": "quick",
    "quick_policy": "quick",
    "parse_duration": "units",
    "parse_size": "units",
    "PolicyError": "errors",
    "ResolvedPolicy": "resolved",
    **{name: "types" for name in (
        "Action", "BudgetEntry", "CredentialBinding", "Decision", "ExecConfig", "FilesConfig",
        "Limits", "Origin", "Rule",
    )},
})
