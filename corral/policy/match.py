"""The compiled matcher: decisions without scanning every rule.

Semantics (DESIGN "Policy language"): each policy yields its own first matching rule (host,
port, method and path all match); any ``deny`` among them wins, naming its rule; otherwise the
non-deny rules must agree on action and credential (composition guarantees it; if they do not,
the decision fails closed to deny); no match anywhere is the default deny. For a CONNECT (host
and port only) the first rule matching host and port sets the mode; a ``deny`` restricted by
methods or paths cannot be judged without seeing requests, so it makes the connection
``inspect`` and is then applied to each request.

Lookup (see ``index``): host -> index by exact name, by each parent suffix for ``*.suffix``
patterns (a dict walk over the host's labels) and ``*``; then port, method, and a walk down a
path trie to a precomputed, ordered candidate list; only globs are checked in full.

Paths are decided on their readings (``corral.policy.readings``): a path that is not plain is
read the ways servers read it and decided on each reading; an explicit deny on any reading
wins, an allow stands only if every reading is allowed the same way (action and credential),
and otherwise the request is refused with a 400 that names the readings. Deny globs are also
compared case-folded (a case-insensitive server reads ``/ADMIN`` as ``/admin``); allow globs
never are, so case can only narrow what a policy allows.

Invariants: ``connect``/``request`` never raise (an internal error returns a deny decision);
an exact-name hit needs no host validation because every key is a validated pattern, any
other host is normalised and validated before a wildcard or ``*`` may match it.
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.policy.hosts import normalize_host
from corral.policy.index import HostIdx, PathIdx, attach_entries, build_host, first_per_policy
from corral.policy.paths import ANY, CHILD, COUNT, LITERAL, SUBTREE, GlobTest, glob_hit, glob_test
from corral.policy.readings import UnreadablePath, readings
from corral.policy.types import Decision, Rule

__all__ = ["Matcher"]


class Matcher:
    """Compiled form of an ordered rule list; ``policy[i]`` is rule i's policy position."""

    def __init__(self, rules: Sequence[Rule], policy: Sequence[int], names: Sequence[str]) -> None:
        self.rules = tuple(rules)
        self.policy = tuple(policy)
        self.names = tuple(names)
        self.globs: tuple[tuple[GlobTest, ...] | None, ...] = tuple(
            None if r.paths is None else tuple(glob_test(g) for g in r.paths) for r in rules
        )
        self.request_decision = tuple(Decision(r.action, r, _message(r)) for r in rules)
        # Case-folded readings matter only to path-restricted denies. A deny glob with upper
        # case differs from its folded form even for a lower-case path: then every request
        # takes the readings path.
        deny_globs = [g for r in rules if r.action == "deny" and r.paths for g in r.paths]
        self.fold = bool(deny_globs)
        self.fold_all = any(g != g.lower() for g in deny_globs)
        self._folded: Matcher | None = None
        self.connect_decision = tuple(
            Decision("inspect", r, _message(r, partial=True)) if _partial_deny(r) else d
            for r, d in zip(rules, self.request_decision, strict=True)
        )
        self.exact: dict[str, HostIdx] = {}
        self.wild: dict[str, HostIdx] = {}
        self.star: HostIdx | None = None
        self._index_hosts()
        # One policy and exact names only: a request needs one index walk and no merging.
        self.simple = len(set(policy)) <= 1 and not self.wild and self.star is None
        # port -> method -> host -> path index: two small, hot dicts then one large one, so
        # few cache lines are touched per decision even with 10,000 hosts.
        self.flat: dict[int, dict[str, dict[str, PathIdx]]] = {}
        if self.simple:
            self._flatten()
        seen: set[int] = set()
        for root in self._roots():
            if id(root) not in seen:
                seen.add(id(root))
                attach_entries(root, self.rules, self.globs, self.request_decision)

    def _index_hosts(self) -> None:
        by_pattern: dict[str, list[int]] = {}
        for i, rule in enumerate(self.rules):
            by_pattern.setdefault(rule.host, []).append(i)
        for pattern, indices in by_pattern.items():
            index = build_host(indices, self.rules, self.policy)
            if pattern == "*":
                self.star = index
            elif pattern.startswith("*."):
                self.wild[pattern[2:]] = index
            else:
                self.exact[pattern] = index

    def _flatten(self) -> None:
        for host, index in self.exact.items():
            if not (host.isascii() and host == host.lower()):
                continue  # never equal to a normalised request host (looked up raw)
            for port, methods in index.req.items():
                for method, root in methods.items():
                    self.flat.setdefault(port, {}).setdefault(method, {})[host] = root

    def _roots(self) -> list[PathIdx]:
        hosts = [*self.exact.values(), *self.wild.values(), *filter(None, [self.star])]
        return [root for index in hosts for methods in index.req.values()
                for root in methods.values()]

    def _hosts(self, exact: HostIdx | None, host: str) -> list[HostIdx]:
        found = [] if exact is None else [exact]
        if self.wild:
            dot = host.find(".")
            while dot >= 0:
                index = self.wild.get(host[dot + 1 :])
                if index is not None:
                    found.append(index)
                dot = host.find(".", dot + 1)
        if self.star is not None:
            found.append(self.star)
        return found

    def connect(self, host: str, port: int) -> Decision:
        try:
            name = normalize_host(host)
            if name is None or type(port) is not int:
                return _bad_input(host, port)
            lists = [c for idx in self._hosts(self.exact.get(name), name)
                     if (c := idx.conn.get(port))]
            if not lists:
                return self._default(name, port, None, None)
            cands = lists[0] if len(lists) == 1 else first_per_policy(
                sorted({i for lst in lists for i in lst}), self.policy)
            decisions = [self.connect_decision[i] for i in cands]
            for decision in decisions:
                if decision.action == "deny":
                    return decision
            if any(d.action != decisions[0].action for d in decisions):
                # A connection whose requests are judged one by one (inspect or platform)
                return next(d for d in decisions if d.action in ("inspect", "platform"))
            return decisions[0]
        except Exception as err:  # fail closed: a decision bug must never open egress
            return Decision("deny", None, f"internal error while deciding (fail closed): {err!r}")

    # The hot path, inlined on purpose (each call it saves is ~0.1 us of a decision that takes
    # ~1 us: bench/bench_policy.py); its branches are one walk, commented step by step.
    def request(self, host: str, port: int, method: str, path: str) -> Decision:  # noqa: C901
        target = path  # the request target as sent: path and maybe a query
        try:
            if type(port) is not int:
                return _bad_input(host, port)
            path = target.partition("?")[0] if "?" in target else target
            # Not plain (readings.plain, inlined), or case may change what a deny matches.
            if ("%" in path or "/." in path or "//" in path or "\\" in path or ";" in path
                    or "./" in path or path[-1:] == "." or path[:1] != "/" or "#" in target
                    or (self.fold and (self.fold_all or (not path.islower()
                                       and path.lower() != path)))):
                return self._read(host, port, method, target)
            if self.simple:
                # Hot path, inlined (a call costs ~0.1 us here): walk, then first glob hit.
                # The host is looked up as sent: every key is a normalised (lowercase ASCII)
                # name, so a hit needs no normalisation; anything else (upper case, a trailing
                # dot, Unicode, an IP in another form) misses and is normalised on the slow path.
                by_method = self.flat.get(port)
                hosts = None if by_method is None else by_method.get(method)
                found = None if hosts is None else hosts.get(host)
                if found is None and by_method is not None and method.isupper():
                    # Rules without ``methods`` are filed under "": what the slow path would
                    # try next with this (already upper-case) method and this host as sent.
                    any_method = by_method.get("")
                    found = None if any_method is None else any_method.get(host)
                name = host
                if found is None:
                    slow = self._slow_root(by_method, host, port, method, path)
                    if isinstance(slow, Decision):
                        return slow  # a deny: bad host, or no rule for this host and port
                    found = slow
                    name = host.lower() if host.isascii() else ""  # for the deny message
                root = node = found
                if node.children:  # a leaf's children is one shared empty dict
                    if node.depth == 1:  # one level (common): find the first segment only
                        end = path.find("/", 1)
                        segment = path[1:] if end < 0 else path[1:end]
                        # A lone child is compared directly: no dict to read (a cache miss).
                        child = (node.only_child if segment == node.only_segment
                                 else node.children.get(segment))
                        if child is not None:
                            node = child
                    else:  # split no deeper than the trie: the remainder matches no key
                        for segment in path[1:].split("/", node.depth):
                            child = (node.only_child if segment == node.only_segment
                                     else node.children.get(segment))
                            if child is None:
                                break
                            node = child
                if node.hit is not None:
                    return node.hit
                if node.count_hit is not None and path.count("/") == node.count:
                    return node.count_hit  # a first "/p/*" entry: a count of segments
                entries = root.every_entries if node.entries is None else node.entries
                for tests, decision in entries:
                    if tests is None:
                        return decision
                    for kind, a, b, rx in tests:
                        if kind == SUBTREE:
                            if path == a or path.startswith(b):
                                return decision
                        elif kind == LITERAL:
                            if path == a:
                                return decision
                        elif kind == ANY:
                            return decision
                        elif kind == COUNT:  # "/p/*" where the walk matched /p already
                            if path.count("/") == len(a):
                                return decision
                        elif kind == CHILD:
                            if path.startswith(a) and "/" not in path[len(a) :]:
                                return decision
                        elif rx is not None and rx.fullmatch(path) is not None:
                            return decision
                return self._default(name, port, method, path)
            return self._decide(host, port, method, path)
        except Exception as err:  # fail closed
            return Decision("deny", None, f"internal error while deciding (fail closed): {err!r}")

    def _read(self, host: str, port: int, method: str, target: str) -> Decision:
        """Decide every reading of the target's path and combine (see the module docstring)."""
        try:
            paths = readings(target)
        except UnreadablePath as err:
            return Decision("deny", None, f"refused: the request path cannot be read one way: "
                            f"{err}", 400)
        decisions = [self._decide(host, port, method, p) for p in paths]
        if self.fold:
            folded = self._folded_matcher()
            for p in paths:
                d = folded._decide(host, port, method, p.lower())
                if d.action == "deny" and d.rule is not None:
                    decisions.append(self.request_decision[folded.rules.index(d.rule)])
        first = decisions[0]
        for d in decisions:
            if d.action == "deny" and d.rule is not None:
                return d  # an explicit deny on any reading wins
        if all(d.action == "deny" for d in decisions):
            return first
        cred = first.rule.credential if first.rule is not None else None
        if all(d.action == first.action and d.rule is not None and d.rule.credential == cred
               for d in decisions):
            return first
        shown = ", ".join(repr(p) for p in paths)
        return Decision("deny", None, f"refused: servers read the path of {target!r} in "
                        f"several ways ({shown}) and the policy does not allow every reading "
                        "alike; send the path in plain form (no encoded letters, ';' "
                        "parameters, dot segments or doubled slashes)", 400)

    def _folded_matcher(self) -> Matcher:
        if self._folded is None:
            rules = [r._replace(paths=tuple(g.lower() for g in r.paths)) if r.paths else r
                     for r in self.rules]
            self._folded = Matcher(rules, self.policy, self.names)
        return self._folded

    def _decide(self, host: str, port: int, method: str, path: str) -> Decision:
        """The general lookup of one (normalised) path: any host form, several policies."""
        try:
            name = host.lower() if host.isascii() else ""
            if name not in self.exact:
                checked = normalize_host(host)
                if checked is None:
                    return _bad_input(host, port)
                name = checked
            exact = self.exact.get(name)
            method = method.upper()
            lists: list[Sequence[int]] = []
            for idx in self._hosts(exact, name):
                methods = idx.req.get(port)
                if methods is not None:
                    pidx = methods.get(method) or methods[""]
                    cands = self._walk(pidx, path)
                    if cands:
                        lists.append(cands)
            if not lists:
                return self._default(name, port, method, path)
            merged = lists[0] if len(lists) == 1 else sorted({i for lst in lists for i in lst})
            return self._choose(merged, path, name, port, method)
        except Exception as err:  # fail closed
            return Decision("deny", None, f"internal error while deciding (fail closed): {err!r}")

    def _slow_root(self, by_method: dict[str, dict[str, PathIdx]] | None, host: str, port: int,
                   method: str, path: str) -> PathIdx | Decision:
        """The fast lookup missed: normalise host and method, then try again."""
        checked = normalize_host(host)
        if checked is None:
            return _bad_input(host, port)
        method = method.upper()
        for key in (method, ""):
            hosts = None if by_method is None else by_method.get(key)
            root = None if hosts is None else hosts.get(checked)
            if root is not None:
                return root
        return self._default(checked, port, method, path)

    @staticmethod
    def _walk(pidx: PathIdx, path: str) -> Sequence[int]:
        """The candidates at the deepest trie node the path's leading segments reach."""
        node = pidx
        if node.children:
            for segment in path.split("/")[1:]:
                child = node.children.get(segment)
                if child is None:
                    break
                node = child
        return pidx.every if node.cands is None else node.cands

    def _choose(self, cands: Sequence[int], path: str, name: str, port: int,
                method: str) -> Decision:
        decided: set[int] = set()
        first = -1
        disagree: Rule | None = None
        for i in cands:
            pol = self.policy[i]
            if pol in decided:
                continue
            if self.globs[i] is not None and not glob_hit(self.globs[i] or (), path):
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
