"""``corral.proxy.decide``: the policy's answer passes through unchanged, and anything that
goes wrong while deciding (an exception of any kind, a non-Decision answer) is a deny with no
rule; ``binding_for`` never raises and never returns something that is not a binding."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.policy.types import CredentialBinding, Decision
from corral.proxy import decide

from .unit_harness import ORIGIN, rule

BINDING = CredentialBinding("tok", ORIGIN)
_errors = st.sampled_from([ValueError, KeyError, TypeError, RuntimeError, AttributeError,
                           IndexError, UnicodeError, RecursionError, ZeroDivisionError, OSError])
_decisions = st.builds(
    Decision,
    st.sampled_from(["deny", "direct", "inspect"]),
    st.one_of(st.none(), st.builds(rule, st.sampled_from(["a.test", "b.test"]))),
    st.text(max_size=20),
    st.sampled_from([400, 403]),
)
_not_decisions = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.integers(),
                           st.tuples(st.just("inspect"), st.none(), st.just("")))


class _Answers:
    """A policy whose every method returns ``value`` or raises it, if it is an exception."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def _answer(self) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value

    def decide_connect(self, host: str, port: int) -> Any:
        return self._answer()

    def decide_request(self, host: str, port: int, method: str, path: str) -> Any:
        return self._answer()

    def credentials_for(self, decision: Decision) -> Any:
        return self._answer()


def _both(policy: Any) -> list[Decision]:
    return [decide.connect(policy, "a.test", 443),
            decide.request(policy, "a.test", 443, "GET", "/")]


@given(_decisions)
def test_a_decision_passes_through_unchanged(decision: Decision) -> None:
    assert _both(_Answers(decision)) == [decision, decision]


@given(_errors, st.text(max_size=30))
def test_any_exception_is_a_deny_without_a_rule(error: type[Exception], text: str) -> None:
    for got in _both(_Answers(error(text))):
        assert (got.action, got.rule, got.status) == ("deny", None, 403)
        assert error.__name__ in got.message and "fails closed" in got.message


@given(_not_decisions)
def test_a_non_decision_answer_is_a_deny(value: Any) -> None:
    for got in _both(_Answers(value)):
        assert (got.action, got.rule) == ("deny", None)
        assert "TypeError" in got.message


def test_a_policy_missing_its_methods_is_a_deny() -> None:
    assert [d.action for d in _both(object())] == ["deny", "deny"]


@pytest.mark.parametrize(("answer", "expected"), [
    (BINDING, BINDING),
    (None, None),
    (ValueError("boom"), None),
    ("tok", None),  # a name is not a binding
    (("tok", ORIGIN), None),  # nor is a plain tuple shaped like one
])
def test_binding_for(answer: Any, expected: CredentialBinding | None) -> None:
    assert decide.binding_for(_Answers(answer), Decision("inspect", rule(), "")) == expected


def test_failed_names_the_error_and_denies() -> None:
    got = decide.failed(KeyError("x"))
    assert got.action == "deny" and not got.allowed and got.origin == "default deny"
    assert "KeyError" in got.message
