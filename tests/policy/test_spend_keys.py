"""The spend keys of the policy language: a rule's ``meter`` and top-level ``budgets``. Every
budget of every composed policy applies; policies without them hash as before."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.policy import PolicyError, resolve

periods = st.sampled_from(["run", "day", "week", "month"])
amounts = st.one_of(st.integers(0, 10**6),
                    st.floats(0, 10**6, allow_nan=False))


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_meter_and_budgets_load(tmp_path: Path) -> None:
    spec = write(tmp_path / "p.yaml", "name: p\negress:\n  - host: api.openai.com\n"
                 "    action: inspect\n    meter: openai\n"
                 "budgets:\n  - {amount: 5, period: run}\n  - {amount: 0.5, period: day}\n")
    rp = resolve([spec])
    assert rp.rules[0].meter == "openai"
    assert [(b.amount, b.period, b.origin.line) for b in rp.budgets] == [
        (5.0, "run", 7), (0.5, "day", 8)]
    assert rp.canonical()["budgets"] == [{"amount": 5.0, "period": "run", "policy": "p"},
                                         {"amount": 0.5, "period": "day", "policy": "p"}]


@pytest.mark.parametrize(("text", "error"), [
    ("egress:\n  - {host: a.com, action: direct, meter: openai}\n", "needs action: inspect"),
    ("egress:\n  - {host: a.com, action: deny, meter: openai}\n", "needs action: inspect"),
    ("egress:\n  - {host: a.com, action: inspect, meter: gemini}\n", "one of: anthropic, openai"),
    ("budgets:\n  - {amount: -1, period: run}\n", "between 0 and 1000000"),
    ("budgets:\n  - {amount: 1000001, period: run}\n", "between 0 and 1000000"),
    ("budgets:\n  - {amount: true, period: run}\n", "budgets[0].amount"),
    ("budgets:\n  - {amount: '5', period: run}\n", "budgets[0].amount"),
    ("budgets:\n  - {amount: 5, period: year}\n", "one of: run, day, week, month"),
    ("budgets:\n  - {amount: 5}\n", "missing required key 'period'"),
    ("budgets:\n  - {amount: 5, period: run, per: agent}\n", "unknown key 'per'"),
    ("budgets: {amount: 5, period: run}\n", "budgets"),
])
def test_bad_spend_keys_name_file_line_and_field(tmp_path: Path, text: str, error: str) -> None:
    spec = write(tmp_path / "p.yaml", "name: p\n" + text)
    with pytest.raises(PolicyError) as err:
        resolve([spec])
    assert error in str(err.value) and "p.yaml:" in str(err.value)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.lists(st.tuples(amounts, periods), max_size=3), min_size=1,
                        max_size=4))
def test_every_budget_of_every_policy_applies(tmp_path: Path,
                                              entries: list[list[tuple[float, str]]]) -> None:
    specs = []
    for n, budgets in enumerate(entries):
        lines = "".join(f"  - {{amount: {a!r}, period: {p}}}\n" for a, p in budgets)
        specs.append(write(tmp_path / f"p{n}.yaml",
                           f"name: p{n}\n" + (f"budgets:\n{lines}" if budgets else "")))
    rp = resolve(specs)
    want = [(float(a), p, f"p{n}") for n, b in enumerate(entries) for a, p in b]
    assert [(b.amount, b.period, b.policy) for b in rp.budgets] == want
    # Composing in another order never drops one either.
    assert sorted(resolve(specs[::-1]).budgets) == sorted(rp.budgets)


def test_policies_without_spend_keys_hash_as_before(tmp_path: Path) -> None:
    spec = write(tmp_path / "p.yaml", "name: p\negress:\n  - {host: a.com, action: inspect}\n")
    canonical = resolve([spec]).canonical()
    assert "budgets" not in canonical and "meter" not in canonical["rules"][0]
    metered = write(tmp_path / "q.yaml", "name: p\negress:\n"
                    "  - {host: a.com, action: inspect, meter: anthropic}\n")
    assert resolve([metered]).digest != resolve([spec]).digest


@given(amount=st.floats(0, 10**6, allow_nan=False))
def test_a_number_reads_as_a_number_however_python_prints_it(amount: float) -> None:
    # PyYAML alone reads ``1e-05`` (YAML 1.1: no dot) as text; the policy reader follows YAML 1.2.
    from corral.policy.yamlsrc import parse_yaml
    for text in (repr(amount), f"{amount:e}", f"{amount:E}", f"+{amount!r}"):
        data, _ = parse_yaml(f"amount: {text}\nquoted: '{text}'\n")
        assert data == {"amount": float(text), "quoted": text}
