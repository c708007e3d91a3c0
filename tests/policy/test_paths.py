"""Path globs: validation, and the fast tests agree with the regex."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.policy.paths import compile_glob, glob_hit, glob_test, validate_glob

GLOBS = ["/**", "/a/**", "/a/b", "/a/*", "/a/*/c", "/a/**/c", "/a/b*", "/", "/*", "/a/b/**"]


@settings(max_examples=300, deadline=None)
@given(glob=st.sampled_from(GLOBS),
       path=st.lists(st.sampled_from(["a", "b", "c", "bx", ""]), max_size=4).map(
           lambda segs: "/" + "/".join(segs)))
def test_fast_glob_tests_agree_with_regex(glob: str, path: str) -> None:
    assert glob_hit((glob_test(glob),), path) == (compile_glob(glob).fullmatch(path) is not None)


@pytest.mark.parametrize("glob", ["repos/**", "/a**", "/a/**b", "/a b", "/a?x", "/a#x",
                                  "/a/../b"])
def test_bad_globs(glob: str) -> None:
    with pytest.raises(ValueError):
        validate_glob(glob)
