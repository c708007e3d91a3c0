"""Host pattern validation and normalisation."""

from __future__ import annotations

import pytest

from corral.policy.hosts import normalize_host, normalize_pattern, patterns_overlap


@pytest.mark.parametrize(("raw", "want"), [
    ("API.Example.COM.", "api.example.com"), ("*.Example.com", "*.example.com"), ("*", "*"),
    ("10.0.0.1", "10.0.0.1"), ("[2001:DB8::1]", "2001:db8::1"),
    ("bücher.example", "xn--bcher-kva.example"), ("*.straße.example", "*.xn--strae-oqa.example"),
])
def test_patterns_normalise(raw: str, want: str) -> None:
    assert normalize_pattern(raw) == want


@pytest.mark.parametrize("raw", ["*.com", "*.co.uk", "*.github.io", "foo*bar", "api.*.example.com",
                                 "*example.com", "a..b", ".a.b", "", " a.b", "-a.b", "a_b*",
                                 "999.1.1.1", "*.0.0.1", "1.2.3", "a" * 64 + ".com"])
def test_bad_patterns_rejected(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_pattern(raw)


@pytest.mark.parametrize(("raw", "want"), [
    ("Api.Example.com.", "api.example.com"), ("[::1]", "::1"), ("bücher.example",
                                                                "xn--bcher-kva.example"),
    ("a b", None), ("x..y", None), ("x.y..", None), ("", None), ("h:443", None),
])
def test_request_hosts(raw: str, want: str | None) -> None:
    assert normalize_host(raw) == want


def test_overlap_is_symmetric_and_excludes_the_apex() -> None:
    assert patterns_overlap("*.a.com", "b.a.com") and patterns_overlap("b.a.com", "*.a.com")
    assert patterns_overlap("*.a.com", "*.b.a.com") and patterns_overlap("*", "x.org")
    assert not patterns_overlap("*.a.com", "a.com") and not patterns_overlap("*.a.com", "*.b.com")
