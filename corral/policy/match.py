"""The compiled matcher: decisions without scanning every rule.

Semantics (DESIGN "Policy language"): each policy yields its own first matching rule (host,
port, method and path all match); any ``deny`` among them wins, naming its rule; otherwise the
non-deny rules must agree on action and credential (composition guarantees it; if they do not,
the decision fails closed to deny); no match anywhere is the default deny. For a CONNECT (host
and port only) the first rule matching host and port sets the mode; a ``deny`` restricted by
methods or paths cannot be judged without seeing requests, so it makes the connection
``inspect`` and is then applied to each request.

Index, so cost stays flat as rules grow: host -> bucket by exact name, by each parent suffix
for ``*.suffix`` patterns (a dict walk over the host's labels) and ``*``; in a bucket, port ->
method -> path trie over the glob's literal leading segments. Candidates from the index are a
superset of the matching rules, visited in rule order, and only the path is checked in full.

Invariant: ``connect``/``request`` never raise; an internal error returns a deny decision.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from corral.policy.hosts import normalize_host
from corral.policy.paths import canonical_path, compile_glob, glob_literal_segments
from corral.policy.types import Decision, Rule

__all__ = ["Matcher"]


# Plain slotted classes, not dataclasses: class creation is on the launch path (~1 ms each).
class _Trie:
    __slots__ = ("children", "here")

    def __init__(self) -> None:
        self.children: dict[str, _Trie] = {}
        self.here: list[int] = []


class _PathIdx:
    __slots__ = ("every", "free", "trie")

    def __init__(self, free: tuple[int, ...], trie: _Trie | None, every: tuple[int, ...]) -> None:
        self.free = free  # rules without paths; only the first per policy can win
        self.trie = trie  # rules with paths, keyed by their literal leading segments
        self.every = every  # all rules, for ambiguous paths


class _PortIdx:
    __slots__ = ("connect", "methods", "other")

    def __init__(self, connect: tuple[int, ...], methods: dict[str, _PathIdx],
                 other: _PathIdx) -> None:
        self.connect = connect  # the first rule per policy: it alone sets the mode
        self.methods = methods  # method -> rules naming it or any method
        self.other = other  # rules for any method, for methods no rule names


def _first_per_policy(indices: Sequence[int], policy: Sequence[int]) -> tuple[int, ...]:
    seen: set[int] = set()
    out = []
    for i in indices:
        if policy[i] not in seen:
            seen.add(policy[i])
            out.append(i)
    return tuple(out)


class Matcher:
    """Compiled form of an ordered rule list; ``policy[i]`` is rule i's policy position."""

    def __init__(self, rules: Sequence[Rule], policy: Sequence[int], names: Sequence[str]) -> None:
        self.rules = tuple(rules)
        self.policy = tuple(policy)
        self.names = tuple(names)
        self.globs: tuple[tuple[re.Pattern[str], ...] | None, ...] = tuple(
            None if r.paths is None else tuple(compile_glob(g) for g in r.paths) for r in rules
        )
        self.request_decision = tuple(Decision(r.action, r, _message(r)) for r in rules)
        self.connect_decision = tuple(
            Decision("inspect", r, _message(r, partial=True)) if _partial_deny(r) else d
            for r, d in zip(rules, self.request_decision, strict=True)
        )
        by_pattern: dict[str, list[int]] = {}
        for i, rule in enumerate(rules):
            by_pattern.setdefault(rule.host, []).append(i)
        self.exact: dict[str, dict[int, _PortIdx]] = {}
        self.wild: dict[str, dict[int, _PortIdx]] = {}
        self.star: dict[int, _PortIdx] | None = None
        for pattern, indices in by_pattern.items():
            bucket = self._bucket(indices)
            if pattern == "*":
                self.star = bucket
            elif pattern.startswith("*."):
                self.wild[pattern[2:]] = bucket
            else:
                self.exact[pattern] = bucket

    def _bucket(self, indices: list[int]) -> dict[int, _PortIdx]:
        ports = sorted({p for i in indices for p in self.rules[i].ports})
        bucket = {}
        for port in ports:
            here = [i for i in indices if port in self.rules[i].ports]
            named = sorted({m for i in here for m in (self.rules[i].methods or ())})
            bucket[port] = _PortIdx(
                connect=_first_per_policy(here, self.policy),
                methods={m: self._paths([i for i in here if m in (self.rules[i].methods or (m,))])
                         for m in named},
                other=self._paths([i for i in here if self.rules[i].methods is None]),
            )
        return bucket

    def _paths(self, indices: list[int]) -> _PathIdx:
        free = [i for i in indices if self.rules[i].paths is None]
        trie = None
        for i in indices:
            for glob in self.rules[i].paths or ():
                trie = trie or _Trie()
                node = trie
                for segment in glob_literal_segments(glob):
                    node = node.children.setdefault(segment, _Trie())
                if not node.here or node.here[-1] != i:
                    node.here.append(i)
        return _PathIdx(_first_per_policy(free, self.policy), trie, tuple(indices))

    def _port_indexes(self, host: str, port: int) -> list[_PortIdx]:
        found = []
        bucket = self.exact.get(host)
        if bucket is not None and port in bucket:
            found.append(bucket[port])
        if self.wild:
            dot = host.find(".")
            while dot >= 0:
                bucket = self.wild.get(host[dot + 1 :])
                if bucket is not None and port in bucket:
                    found.append(bucket[port])
                dot = host.find(".", dot + 1)
        if self.star is not None and port in self.star:
            found.append(self.star[port])
        return found

    def connect(self, host: str, port: int) -> Decision:
        try:
            name = normalize_host(host)
            if name is None or type(port) is not int:
                return _bad_input(host, port)
            found = self._port_indexes(name, port)
            if not found:
                return self._default(name, port, None, None)
            cands = found[0].connect if len(found) == 1 else sorted(
                {i for idx in found for i in idx.connect})
            chosen = _first_per_policy(cands, self.policy)
            decisions = [self.connect_decision[i] for i in chosen]
            for decision in decisions:
                if decision.action == "deny":
                    return decision
            if any(d.action != decisions[0].action for d in decisions):
                return next(d for d in decisions if d.action == "inspect")
            return decisions[0]
        except Exception as err:  # fail closed: a decision bug must never open egress
            return Decision("deny", None, f"internal error while deciding (fail closed): {err!r}")

    def request(self, host: str, port: int, method: str, target: str) -> Decision:
        try:
            name = normalize_host(host)
            if name is None or type(port) is not int:
                return _bad_input(host, port)
            method = method.upper()
            path, ambiguous = canonical_path(target)
            found = self._port_indexes(name, port)
            lists: list[Sequence[int]] = []
            for idx in found:
                pidx = idx.methods.get(method, idx.other)
                if ambiguous:
                    lists.append(pidx.every)
                    continue
                if pidx.free:
                    lists.append(pidx.free)
                node = pidx.trie
                if node is not None:
                    if node.here:
                        lists.append(node.here)
                    for segment in path.split("/")[1:]:
                        node = node.children.get(segment)
                        if node is None:
                            break
                        if node.here:
                            lists.append(node.here)
            if not lists:
                return self._default(name, port, method, path)
            cands = lists[0] if len(lists) == 1 else sorted({i for lst in lists for i in lst})
            return self._choose(cands, path, ambiguous, name, port, method)
        except Exception as err:  # fail closed
            return Decision("deny", None, f"internal error while deciding (fail closed): {err!r}")

    def _choose(self, cands: Sequence[int], path: str, ambiguous: bool, name: str, port: int,
                method: str) -> Decision:
        decided: set[int] = set()
        first = -1
        disagree: Rule | None = None
        for i in cands:
            pol = self.policy[i]
            if pol in decided:
                continue
            globs = self.globs[i]
            if globs is not None:
                if ambiguous:
                    if self.rules[i].action != "deny":
                        continue
                elif not any(g.fullmatch(path) for g in globs):
                    continue
            if self.rules[i].action == "deny":
                return self.request_decision[i]
            decided.add(pol)
            if first < 0:
                first = i
            else:
                a, b = self.rules[first], self.rules[i]
                if (a.action, a.credential) != (b.action, b.credential):
                    disagree = b
        if first < 0:
            return self._default(name, port, method, path)
        if disagree is not None:
            a = self.rules[first]
            return Decision("deny", None, f"policies disagree: {a.origin} says {a.action} and "
                            f"{disagree.origin} says {disagree.action}; make them agree")
        return self.request_decision[first]

    def _default(self, host: str, port: int, method: str | None, path: str | None) -> Decision:
        what = f"{method} {host}:{port}{path}" if method else f"CONNECT {host}:{port}"
        if not self.names:
            return Decision("deny", None, f"default deny: {what}: no policy given "
                            "(pass -p builtin:NAME or -p FILE)")
        return Decision("deny", None, f"default deny: no rule of policy {', '.join(self.names)} "
                        f"matches {what}; to allow it, add an egress rule such as "
                        f"'- {{host: {host}, ports: [{port}], action: inspect}}'")


def _partial_deny(rule: Rule) -> bool:
    return rule.action == "deny" and (rule.methods is not None or rule.paths is not None)


def _message(rule: Rule, partial: bool = False) -> str:
    where = f"rule {rule.origin} of policy {rule.policy}"
    if partial:
        return f"inspected: {where} denies some requests to {rule.host}, so each is checked"
    if rule.action == "deny":
        why = f": {rule.reason}" if rule.reason else ""
        return (f"denied by {where}{why}; to allow it, remove or narrow that rule "
                "(an explicit deny overrides every other policy)")
    return f"allowed ({rule.action}) by {where}"


def _bad_input(host: object, port: object) -> Decision:
    return Decision("deny", None, f"denied: {host!r} port {port!r} is not a valid host and port")
