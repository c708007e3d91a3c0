"""The audit budget's rule (corral.audit.budget), searched with hypothesis: whatever the
sequence of events and their timing, no two events that were decided differently are ever
folded into one counted event, every event is accounted for exactly once (its own event, a
share of a counted one, or a refusal), and a repeated event is bounded per window."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.audit.budget import HOLD, OWN, REFUSE, VOLATILE, Budget
from corral.audit.events import validate

# A small pool of events, most differing from another in one field only (a name, an rcode,
# a qtype, a path, a rule, a decision, a binding): repeats and near-misses are both common.
POOL: list[tuple[str, dict[str, Any]]] = [
    ("dns.query", {"name": "a.test", "rcode": "NXDOMAIN", "qtype": "A"}),
    ("dns.query", {"name": "b.test", "rcode": "NXDOMAIN", "qtype": "A"}),
    ("dns.query", {"name": "a.test", "rcode": "NOERROR", "qtype": "A"}),
    ("dns.query", {"name": "a.test", "rcode": "NXDOMAIN", "qtype": "AAAA"}),
    ("proxy.allow", {"host": "a.test", "rule": "p.yaml:3", "path": "/"}),
    ("proxy.allow", {"host": "a.test", "rule": "p.yaml:3", "path": "/x"}),
    ("proxy.deny", {"host": "a.test", "rule": "p.yaml:3", "path": "/"}),
    ("proxy.deny", {"host": "a.test", "rule": "default deny", "path": "/"}),
    ("credential.inject", {"binding": "gh", "host": "a.test"}),
    ("credential.inject", {"binding": "npm", "host": "a.test"}),
    ("exec.start", {"argv": ["x"]}),  # not aggregated: always its own
]


@st.composite
def _event(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    type_, data = draw(st.sampled_from(POOL))
    data = dict(data)
    if type_.startswith("proxy."):  # measurements differ between otherwise equal requests
        data["duration_ms"] = draw(st.floats(0, 50))
        data["bytes_in"] = draw(st.integers(0, 999))
    return type_, data


EVENTS = _event()


def _stable(type_: str, data: dict[str, Any]) -> tuple[str, str]:
    import json

    return type_, json.dumps({k: v for k, v in data.items()
                              if k not in VOLATILE and k != "count"}, sort_keys=True)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(EVENTS, st.sampled_from([0.0, 0.001, 0.05, 0.3, 1.1])), max_size=300),
       st.sampled_from([2.0, 50.0, 1000.0]), st.sampled_from([2_000, 10**9]),
       st.sampled_from([0, 1, 4]))
def test_distinct_decisions_are_never_merged(events: list[Any], rate: float,
                                            max_bytes: int, burst: int) -> None:
    budget = Budget(rate=rate, max_bytes=max_bytes, window=1.0, burst=burst)
    now = 0.0
    rows: list[tuple[str, dict[str, Any], list[int]]] = []  # type, data, inputs it stands for
    refused: list[int] = []

    def flush(held: list[Any]) -> None:
        for h in held:
            event = h.event()
            validate(h.type, event)  # a counted event is a valid event of its type
            rows.append((h.type, event, list(h.tokens)))
            budget.wrote(h.type, event, now)

    for i, ((type_, data), dt) in enumerate(events):
        now += dt
        flush(budget.due(now))
        verdict = budget.offer(type_, dict(data), now, i)
        if verdict == OWN:
            rows.append((type_, dict(data), [i]))
            budget.wrote(type_, data, now)
        elif verdict == REFUSE:
            refused.append(i)
        else:
            assert verdict == HOLD
    flush(budget.due(now, all_=True))
    assert not budget.held

    # every input accounted for exactly once
    seen = sorted([i for _, _, idx in rows for i in idx] + refused)
    assert seen == list(range(len(events)))
    for type_, data, idx in rows:
        # a row only ever stands for inputs decided exactly as it says
        assert {_stable(*events[i][0]) for i in idx} == {_stable(type_, data)}
        assert data.get("count", 1) == len(idx)
        if len(idx) > 1:
            assert sum(events[i][0][1].get("bytes_in", 0) for i in idx) == data.get("bytes_in", 0)
    # every distinct decision that was not refused has a row of its own
    kept = {_stable(*events[i][0]) for i in range(len(events)) if i not in set(refused)}
    assert kept == {_stable(t, d) for t, d, _ in rows}
    # refusals only once the bytes budget is used up, and then all of them
    if refused:
        assert budget.exhausted and refused == list(range(refused[0], len(events)))


def test_a_flood_of_one_event_writes_a_few_rows_per_window() -> None:
    budget = Budget(rate=100.0, window=1.0, burst=4)
    rows = 0
    now = 0.0
    for _ in range(100_000):  # 10 s at 10,000/s
        now += 0.0001
        rows += len(budget.due(now))
        if budget.offer("dns.query", {"name": "evil.test", "rcode": "NXDOMAIN"}, now) == OWN:
            rows += 1
            budget.wrote("dns.query", {"name": "evil.test"}, now)
    rows += len(budget.due(now, all_=True))
    assert rows <= 10 * (4 + 1) + 2, rows


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(EVENTS, st.sampled_from([0.0, 0.001, 0.05])), max_size=400))
def test_allowed_work_is_never_held_or_slowed(events: list[Any]) -> None:
    """Allowed requests, answers and injections are written at once, whatever else floods:
    only refusals are folded, and only refusals draw on the rate that slows the proxy."""
    from corral.audit.budget import refusal

    budget = Budget(rate=2.0, max_bytes=10**9, window=1.0, burst=0)
    now = 0.0
    for (type_, data), step in events:
        now += step
        verdict = budget.offer(type_, data, now)
        if not refusal(type_, data):
            assert verdict == OWN, (type_, data)
            budget.wrote(type_, data, now)
            assert budget.wait() == 0.0 or budget.tokens < 0
        elif verdict == OWN:
            budget.wrote(type_, data, now)
    if not any(refusal(t, d) for (t, d), _ in events):
        assert budget.wait() == 0.0 and not budget.flooding
