"""The data structures behind the compiled matcher (built once per resolved policy).

host pattern -> ``HostIdx``: ``conn[port]`` (the first rule per policy matching host and
port: it alone sets a CONNECT's mode) and ``req[port][method]`` -> ``PathIdx`` (``""`` holds
the rules for any method, used for methods no rule names). A ``PathIdx`` is a trie over the
whole literal leading segments of each rule's globs; every node stores ``cands``: the rules
that can match a path whose walk ends there (its own and its ancestors' rules plus the rules
without paths), in rule order and pruned after each policy's first path-less rule (that rule
always matches, so nothing after it in that policy can be first). A request therefore walks
to one node and checks a short, ordered list: the cost does not grow with the rule count.
Once built (``attach_entries``), a node also holds what the hot path reads instead of a
list or dict: ``hit``/``count_hit`` for a first entry that needs no test or only a segment
count, ``only_segment``/``only_child`` for a lone child, the shared empty ``_LEAF`` as a
leaf's children, and (root) ``depth``, the deepest literal segment, so a path is split no
further. Each saves a cache miss per decision when there are thousands of tries.

Invariant: ``cands`` is a superset of the rules that match (host, port and method already
match by construction); only globs remain to be checked. Nodes whose list would exceed
``_CAP`` entries store ``None`` and the matcher falls back to ``every`` (still correct).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from corral.policy.paths import ANY, CHILD, COUNT, SUBTREE, GlobTest, glob_literal_segments
from corral.policy.types import Decision, Rule

Entry = tuple[tuple[GlobTest, ...] | None, Decision]

__all__ = ["HostIdx", "PathIdx", "Trie", "attach_entries", "build_host", "first_per_policy"]

_CAP = 256
_LEAF: dict[str, Trie] = {}  # never mutated: set only after a trie is built


# Plain slotted classes, not dataclasses: class creation is on the launch path (~1 ms each).
class Trie:
    """A path trie node; the root of each index also carries ``every``/``every_entries``.

    ``entries`` mirrors ``cands`` as ``(glob tests, decision)`` pairs, filled in by the
    matcher, so the one-policy hot path reads one tuple instead of two large ones.
    """

    # Hot fields first: they share the object's first cache line.
    __slots__ = ("children", "hit", "count_hit", "count", "entries",  # noqa: RUF023
                 "depth", "only_segment", "only_child", "cands", "every", "every_entries",
                 "here")

    def __init__(self) -> None:
        self.children: dict[str, Trie] = {}
        self.here: list[int] = []
        self.cands: tuple[int, ...] | None = ()
        self.entries: tuple[Entry, ...] | None = ()
        self.depth = 0  # root only: the trie's depth (a path is split no further)
        self.only_segment: str | None = None  # the key and node of a lone child
        self.only_child: Trie | None = None
        self.every: tuple[int, ...] = ()  # root only: all rules, for ambiguous/oversized
        self.every_entries: tuple[Entry, ...] = ()
        self.hit: Decision | None = None  # the decision when the first entry always matches
        # The decision when the first entry only needs the path's "/" count to equal ``count``.
        self.count_hit: Decision | None = None
        self.count = 0


PathIdx = Trie  # an index is its root node


class HostIdx:
    __slots__ = ("conn", "req")

    def __init__(self, conn: dict[int, tuple[int, ...]],
                 req: dict[int, dict[str, PathIdx]]) -> None:
        self.conn = conn
        self.req = req


def first_per_policy(indices: Sequence[int], policy: Sequence[int]) -> tuple[int, ...]:
    seen: set[int] = set()
    out = []
    for i in indices:
        if policy[i] not in seen:
            seen.add(policy[i])
            out.append(i)
    return tuple(out)


def _prune(indices: list[int], rules: Sequence[Rule], policy: Sequence[int]) -> tuple[int, ...]:
    done: set[int] = set()
    out = []
    for i in indices:
        if policy[i] in done:
            continue
        out.append(i)
        if rules[i].paths is None:
            done.add(policy[i])
    return tuple(out)


def _fill(node: Trie, inherited: list[int] | None, rules: Sequence[Rule],
          policy: Sequence[int]) -> None:
    mine = None if inherited is None else sorted(set(inherited) | set(node.here))
    node.cands = None if mine is None or len(mine) > _CAP else _prune(mine, rules, policy)
    for child in node.children.values():
        _fill(child, None if node.cands is None else list(node.cands), rules, policy)


def build_paths(indices: list[int], rules: Sequence[Rule], policy: Sequence[int]) -> PathIdx:
    root = Trie()
    free = [i for i in indices if rules[i].paths is None]
    for i in indices:
        for glob in rules[i].paths or ():
            node = root
            segments = glob_literal_segments(glob)
            root.depth = max(root.depth, len(segments))
            for segment in segments:
                # Interned: equal segments across thousands of nodes share one (hot) object.
                node = node.children.setdefault(sys.intern(segment), Trie())
            if not node.here or node.here[-1] != i:
                node.here.append(i)
    _fill(root, free, rules, policy)
    root.every = tuple(indices)
    return root


def _at_node(glob: str, test: GlobTest, segments: tuple[str, ...]) -> GlobTest | bool:
    """The test a glob needs at a trie node whose walk has matched ``segments``: ``True`` when
    it always matches there, ``False`` when it never can, else a (cheaper) test."""
    anchor = glob_literal_segments(glob)
    if segments[: len(anchor)] != anchor:
        return test  # anchored elsewhere (a rule's other glob brought it here): test in full
    kind = test[0]
    if kind in (ANY, SUBTREE):
        return True  # "/p/**" and the path starts with /p's segments
    if kind == CHILD:  # "/p/*": exactly one segment more than /p
        if len(segments) > len(anchor) + 1:
            return False
        return (COUNT, sys.intern("/" * (len(anchor) + 1)), "", None)
    return test


def attach_entries(root: Trie, rules: Sequence[Rule],
                   tests: Sequence[tuple[GlobTest, ...] | None],
                   decisions: Sequence[Decision]) -> None:
    """Fill ``entries`` and ``hit``. Reaching a node means the path's leading segments equal
    the node's, so a ``/p/**`` glob anchored at the node or above needs no test there, and
    ``/p/*`` only a count of segments."""
    root.every_entries = tuple((tests[i], decisions[i]) for i in root.every)
    stack: list[tuple[Trie, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, segments = stack.pop()
        node.count_hit = None
        if node.cands is None:
            node.entries, node.hit = None, None
        else:
            entries: list[Entry] = []
            for i in node.cands:
                globs, own = rules[i].paths, tests[i]
                if globs is None or own is None:
                    entries.append((None, decisions[i]))
                    continue
                local = [_at_node(g, t, segments) for g, t in zip(globs, own, strict=True)]
                if any(x is True for x in local):
                    entries.append((None, decisions[i]))
                elif kept := tuple(x for x in local if isinstance(x, tuple)):
                    entries.append((kept, decisions[i]))
            node.entries = tuple(entries)
            first = node.entries[0] if node.entries else None
            node.hit = first[1] if first is not None and first[0] is None else None
            if first is not None and first[0] is not None and len(first[0]) == 1:
                kind, a, _, _ = first[0][0]
                if kind == COUNT:
                    node.count_hit, node.count = first[1], len(a)
        stack.extend((child, (*segments, seg)) for seg, child in node.children.items())
        if len(node.children) == 1:
            [(node.only_segment, node.only_child)] = node.children.items()
        if not node.children:
            node.children = _LEAF  # one shared empty dict: a leaf's check reads one hot object


def build_host(indices: list[int], rules: Sequence[Rule], policy: Sequence[int]) -> HostIdx:
    conn: dict[int, tuple[int, ...]] = {}
    req: dict[int, dict[str, PathIdx]] = {}
    # Identical rule lists share one index (GET and HEAD usually do; ports often do): fewer
    # objects means fewer cache misses per decision when there are many rules.
    built: dict[tuple[int, ...], PathIdx] = {}

    def paths_for(chosen: list[int]) -> PathIdx:
        key = tuple(chosen)
        if key not in built:
            built[key] = build_paths(chosen, rules, policy)
        return built[key]

    shared: dict[tuple[int, ...], dict[str, PathIdx]] = {}
    for port in sorted({p for i in indices for p in rules[i].ports}):
        here = [i for i in indices if port in rules[i].ports]
        conn[port] = first_per_policy(here, policy)
        if tuple(here) not in shared:
            named = sorted({m for i in here for m in (rules[i].methods or ())})
            methods = {m: paths_for([i for i in here if m in (rules[i].methods or (m,))])
                       for m in named}
            methods[""] = paths_for([i for i in here if rules[i].methods is None])
            shared[tuple(here)] = methods
        req[port] = shared[tuple(here)]
    return HostIdx(conn, req)
