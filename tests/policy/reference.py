"""A small reference evaluator written straight from DESIGN.md's prose, independent of
``corral.policy.match``/``hosts``/``paths`` (it shares only the ``Rule`` type).

"A rule matches when host, port, method and path all match; otherwise evaluation moves to the
next rule. Hosts are compared lowercased, without trailing dot, in IDNA form. For a request,
each policy yields its own first matching rule. Any deny among them wins, naming its rule.
Otherwise all matching non-deny rules must agree on action and credential; no match anywhere
is the default deny." Glob: "*" within a segment, "**" across segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from corral.policy.types import Rule

Outcome = tuple[str, Rule | None]  # (action, rule); rule None = default deny / disagreement


def norm_host(host: str) -> str:
    host = host.lower().rstrip(".")
    return host if host.isascii() else host.encode("idna").decode("ascii")


def host_ok(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        apex = pattern[2:]
        return host != apex and host.endswith("." + apex)
    return host == pattern


def glob_ok(glob: str, path: str) -> bool:
    g, p = glob.split("/")[1:], path.split("/")[1:]

    def walk(i: int, j: int) -> bool:
        if i == len(g):
            return j == len(p)
        if g[i] == "**":
            return any(walk(i + 1, k) for k in range(j, len(p) + 1))
        return j < len(p) and fnmatchcase(p[j], g[i]) and "/" not in p[j] and walk(i + 1, j + 1)

    return walk(0, 0)


def rule_ok(rule: Rule, host: str, port: int, method: str | None, path: str | None) -> bool:
    if not host_ok(rule.host, norm_host(host)) or port not in rule.ports:
        return False
    if method is None:  # CONNECT: host and port alone
        return True
    if rule.methods is not None and method not in rule.methods:
        return False
    path = (path or "/").split("?")[0]
    return rule.paths is None or any(glob_ok(g, path) for g in rule.paths)


def decide(policies: Sequence[Sequence[Rule]], host: str, port: int, method: str | None,
           path: str | None) -> Outcome:
    firsts = []
    for rules in policies:
        for rule in rules:
            if rule_ok(rule, host, port, method, path):
                firsts.append(rule)
                break
    if method is None:
        # A deny limited to some methods/paths cannot be judged on a CONNECT: inspect instead.
        acts = [("inspect" if r.action == "deny" and (r.methods or r.paths) else r.action, r)
                for r in firsts]
        for act, rule in acts:
            if act == "deny":
                return "deny", rule
        if not acts:
            return "deny", None
        if all(a == acts[0][0] for a, _ in acts):
            return acts[0]
        return next((a, r) for a, r in acts if a == "inspect")
    for rule in firsts:
        if rule.action == "deny":
            return "deny", rule
    if not firsts:
        return "deny", None
    if any((r.action, r.credential) != (firsts[0].action, firsts[0].credential) for r in firsts):
        return "deny", None
    return firsts[0].action, firsts[0]
