"""Compose loaded policies into one ``ResolvedPolicy`` (DESIGN "Composition").

Invariants:
- Two non-deny rules from different policies whose match sets can intersect but whose outcome
  (action, credential) differs are a conflict, reported with both rules' file:line. Overlap is
  the conservative test, the same everywhere: hosts overlap when one pattern matches the other
  (or either is ``*``), ports and methods when the sets intersect (absent = any), paths unless
  the globs' literal prefixes diverge (``paths.globs_overlap``).
- Bindings with one name and different definitions conflict; so do two different
  ``files.workspace`` or ``files.home``.
- ``exec.allow``, ``files.read``, ``files.write`` (``--rw``), ``files.hide`` are unions (first
  origin kept); ``limits``, ``exec.mode`` and ``files.approval`` take the strictest value, with
  the origin of the winner.
- The command line's quick flags (``corral.policy.quick``) arrive as one more policy and are
  composed by these same rules.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from corral.policy.errors import PolicyError
from corral.policy.hosts import patterns_overlap
from corral.policy.paths import globs_overlap
from corral.policy.resolved import ResolvedPolicy
from corral.policy.types import CredentialBinding, ExecConfig, FilesConfig, Limits, Origin, Rule

if TYPE_CHECKING:  # not at run time: loading it loads pydantic, which quick flags never need
    from corral.policy.load import LoadedPolicy
    from corral.policy.quick import QuickPolicy

__all__ = ["compose", "find_conflicts", "rules_overlap"]

Policy: TypeAlias = "LoadedPolicy | QuickPolicy"

_STRICT = {
    "exec.mode": {"allow": 0, "allowlist": 1, "approve": 2},
    "files.approval": {"none": 0, "writes": 1, "all": 2},
}


def rules_overlap(a: Rule, b: Rule) -> bool:
    if not patterns_overlap(a.host, b.host) or not a.ports & b.ports:
        return False
    if a.methods is not None and b.methods is not None and not a.methods & b.methods:
        return False
    if a.paths is None or b.paths is None:
        return True
    return any(globs_overlap(x, y) for x in a.paths for y in b.paths)


def _overlapping_hosts(pattern: str, index: dict[str, list[Rule]]) -> Iterator[str]:
    """Patterns in ``index`` that overlap ``pattern``, without comparing against all of them."""
    if pattern == "*":
        yield from index
        return
    yield "*"
    body = pattern[2:] if pattern.startswith("*.") else pattern
    yield pattern
    dot = body.find(".")
    while dot >= 0:
        yield "*." + body[dot + 1 :]
        dot = body.find(".", dot + 1)
    if pattern.startswith("*."):
        yield "*." + body
        for other in index:  # patterns under the wildcard's domain
            if other.endswith("." + body) and other != pattern:
                yield other


def find_conflicts(rules: Sequence[Rule], policy_of: Sequence[int]) -> list[str]:
    by_policy: dict[int, dict[str, list[Rule]]] = {}
    for rule, pol in zip(rules, policy_of, strict=True):
        if rule.action != "deny":
            by_policy.setdefault(pol, {}).setdefault(rule.host, []).append(rule)
    problems: list[str] = []
    positions = sorted(by_policy)
    for n, pa in enumerate(positions):
        for pb in positions[n + 1 :]:
            index_b = by_policy[pb]
            for host, group in by_policy[pa].items():
                for other in dict.fromkeys(_overlapping_hosts(host, index_b)):
                    for a in group:
                        for b in index_b.get(other, ()):
                            if (a.action, a.credential) != (b.action, b.credential) and \
                                    rules_overlap(a, b):
                                problems.append(_conflict(a, b))
    return problems


def _outcome(rule: Rule) -> str:
    return rule.action + (f" with credential {rule.credential}" if rule.credential else "")


def _conflict(a: Rule, b: Rule) -> str:
    return (f"{a.origin}: conflict with {b.origin}: policy {a.policy} says {_outcome(a)} and "
            f"policy {b.policy} says {_outcome(b)} for requests both rules match; make them "
            "agree or narrow one (host, ports, methods, paths)")


def _strictest(key: str, items: list[tuple[Any, Origin]]) -> tuple[Any, Origin]:
    if key in _STRICT:
        return max(items, key=lambda item: _STRICT[key][item[0]])
    limited = [item for item in items if item[0] is not None]  # None = unlimited, the loosest
    return min(limited, key=lambda item: item[0]) if limited else items[0]


def _unique(policies: Sequence[Policy], problems: list[str]) -> list[Policy]:
    """One policy per name: the same file given twice counts once, two files sharing a name
    are a problem."""
    seen: dict[str, str] = {}
    unique: list[Policy] = []
    for pol in policies:
        if pol.name in seen:
            if seen[pol.name] != pol.source:
                problems.append(f"{pol.source}:1: name: policy name {pol.name!r} is also used by "
                                f"{seen[pol.name]}; give each policy its own name")
            continue
        seen[pol.name] = pol.source
        unique.append(pol)
    return unique


def _credentials(unique: Sequence[Policy], problems: list[str],
                 provenance: dict[str, tuple[Origin, ...]]) -> dict[str, CredentialBinding]:
    credentials: dict[str, CredentialBinding] = {}
    for pol in unique:
        for name, binding in pol.credentials.items():
            prior = credentials.get(name)
            if prior is None:
                credentials[name] = binding
                provenance[f"credentials.{name}"] = (binding.origin,)
            elif prior._replace(origin=binding.origin) != binding:
                problems.append(f"{binding.origin}: credentials.{name}: conflicts with the "
                                f"binding of the same name at {prior.origin}; rename one or make "
                                "them equal")
    return credentials


def _single(key: str, items: list[tuple[Any, Origin]], problems: list[str]) -> tuple[Any, Origin]:
    """A setting every policy must agree on (``files.workspace``, ``files.home``)."""
    for value, origin in items[1:]:
        if value != items[0][0]:
            problems.append(f"{origin}: {key}: {value} conflicts with {items[0][0]} at "
                            f"{items[0][1]}; set it in one policy (or use --workspace)")
    return items[0]


def _settings(unique: Sequence[Policy], workspace: Path | None, problems: list[str],
              provenance: dict[str, tuple[Origin, ...]]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key in ("limits.memory", "limits.pids", "limits.cpu", "limits.wall", "limits.idle",
                "exec.mode", "files.approval", "files.workspace", "files.home"):
        items = [pol.settings[key] for pol in unique if key in pol.settings]
        if key == "files.workspace" and workspace is not None:
            items = [(workspace, Origin("--workspace", 0))]
        if not items:
            continue
        if key in ("files.workspace", "files.home"):
            value, origin = _single(key, items, problems)
        else:
            value, origin = _strictest(key, items)
        settings[key] = value
        provenance[key] = (origin,)
    return settings


def _unions(unique: Sequence[Policy],
            provenance: dict[str, tuple[Origin, ...]]) -> dict[str, tuple[Any, ...]]:
    unions: dict[str, tuple[Any, ...]] = {}
    for key in ("exec.allow", "files.read", "files.write", "files.hide"):
        merged: dict[Any, Origin] = {}
        for pol in unique:
            for value, origin in pol.lists.get(key, ()):
                merged.setdefault(value, origin)
        unions[key] = tuple(merged)
        provenance[key] = tuple(merged.values())
    return unions


def compose(policies: Sequence[Policy], *,
            workspace: Path | None = None) -> ResolvedPolicy:
    """``workspace`` is ``--workspace`` from the command line: it overrides every policy's
    ``files.workspace`` (so their disagreement is no conflict) and is recorded as its origin."""
    problems: list[str] = []
    unique = _unique(policies, problems)
    rules = tuple(r for pol in unique for r in pol.rules)
    policy_of = tuple(n for n, pol in enumerate(unique) for _ in pol.rules)
    problems += find_conflicts(rules, policy_of)
    provenance: dict[str, tuple[Origin, ...]] = {"rules": tuple(r.origin for r in rules)}
    credentials = _credentials(unique, problems, provenance)
    settings = _settings(unique, workspace, problems, provenance)
    unions = _unions(unique, provenance)
    if problems:
        raise PolicyError(problems)
    # Budgets only add up: every entry of every policy applies, so composing a policy can
    # never lift another's budget.
    budgets = tuple(b for pol in unique for b in pol.budgets)
    if budgets:
        provenance["budgets"] = tuple(b.origin for b in budgets)
    limits = Limits(**{k[7:]: v for k, v in settings.items() if k.startswith("limits.")})
    files = FilesConfig(
        approval=settings.get("files.approval", "writes"), workspace=settings.get(
            "files.workspace"), home=settings.get("files.home"),
        read=unions["files.read"], write=unions["files.write"], hide=unions["files.hide"])
    exec_config = ExecConfig(mode=settings.get("exec.mode", "approve"), allow=unions["exec.allow"])
    return ResolvedPolicy(
        rules=rules, policy_of=policy_of, names=tuple(p.name for p in unique),
        sources=tuple(p.source for p in unique), descriptions=tuple(p.description for p in unique),
        credentials=credentials, limits=limits, files=files, exec=exec_config,
        provenance=provenance, budgets=budgets)
