"""``ResolvedPolicy``: the composed, compiled policy that the rest of corral uses.

It holds only the named-tuple records of ``types`` and the compiled ``Matcher`` (no pydantic,
no dataclasses), so it can be pickled into the policy cache and loaded on the launch path
cheaply.

Invariants: ``decide_connect``/``decide_request`` never raise (an internal error denies);
``digest`` is the sha256 of the canonical JSON of everything that affects behaviour (rules,
bindings, limits, files, exec, budgets, policy names) and not of where it came from; a rule
without ``meter`` and a policy without budgets hash as they did before those keys existed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral._digest import sha256
from corral.policy.match import Matcher
from corral.policy.types import (
    BudgetEntry,
    CredentialBinding,
    Decision,
    ExecConfig,
    FilesConfig,
    Limits,
    Origin,
    Rule,
)

__all__ = ["ResolvedPolicy"]


def _flat(obj: Any) -> dict[str, Any]:
    """A record's fields, one level: never the record itself, which (a tuple) would serialise
    as a JSON list."""
    assert isinstance(obj, Origin | Rule | CredentialBinding | Limits | FilesConfig | ExecConfig
                      | BudgetEntry)
    fields = obj._asdict()
    if isinstance(obj, Rule) and fields["meter"] is None:
        del fields["meter"]  # digests of policies without meters stay what they were
    return fields


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if k != "origin"}
    if isinstance(value, frozenset | set):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class ResolvedPolicy:
    """Rules in composition order (policy by policy, each in file order) plus merged settings."""

    def __init__(self, *, rules: tuple[Rule, ...], policy_of: tuple[int, ...],
                 names: tuple[str, ...], sources: tuple[str, ...],
                 descriptions: tuple[str, ...], credentials: dict[str, CredentialBinding],
                 limits: Limits, files: FilesConfig, exec: ExecConfig,
                 provenance: dict[str, tuple[Origin, ...]],
                 budgets: tuple[BudgetEntry, ...] = ()) -> None:
        self.rules = rules
        self.names = names
        self.sources = sources
        self.descriptions = descriptions
        self.credentials = credentials
        self.limits = limits
        self.files = files
        self.exec = exec
        self.provenance = provenance
        self.budgets = budgets
        self._matcher = Matcher(rules, policy_of, names)
        # The proxy calls these per request: bind straight to the matcher (saves a call).
        self.decide_connect = self._matcher.connect  # type: ignore[method-assign]
        self.decide_request = self._matcher.request  # type: ignore[method-assign]
        self.digest = sha256(
            json.dumps(self.canonical(), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

    def canonical(self) -> dict[str, Any]:
        extra = {"budgets": [_plain(_flat(b)) for b in self.budgets]} if self.budgets else {}
        return {
            **extra,
            "names": list(self.names),
            "rules": [_plain(_flat(r)) for r in self.rules],
            "credentials": {k: _plain(_flat(v)) for k, v in sorted(self.credentials.items())},
            "limits": _plain(_flat(self.limits)),
            "files": _plain(_flat(self.files)),
            "exec": _plain(_flat(self.exec)),
        }

    def decide_connect(self, host: str, port: int) -> Decision:
        """CONNECT or a captured TLS connection: host and port only; the mode to use."""
        return self._matcher.connect(host, port)

    def decide_request(self, host: str, port: int, method: str, path: str) -> Decision:
        """A plain or intercepted request: host, port, method and path (query allowed)."""
        return self._matcher.request(host, port, method, path)

    def credentials_for(self, decision: Decision) -> CredentialBinding | None:
        """The binding to inject for this decision: only an ``inspect`` with a credential."""
        if decision.action != "inspect" or decision.rule is None:
            return None
        name = decision.rule.credential
        return None if name is None else self.credentials.get(name)

    def __repr__(self) -> str:
        return (f"ResolvedPolicy(names={self.names!r}, rules={len(self.rules)}, "
                f"digest={self.digest[:12]})")
