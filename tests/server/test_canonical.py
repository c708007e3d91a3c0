"""The ingest's canonical-form check gives exactly the verdict of the rule it stands for,
``canonical_json(json.loads(text)) == text`` (an undecodable or unencodable text: False), on
canonical texts of every kind of JSON value and on near misses: keys out of order or
repeated, whitespace, other spellings of a number or an escape, raw non-ASCII."""

from __future__ import annotations

import json
import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from corral.audit.events import canonical_json
from corral.server.ingest import _canonical_object


def _reference(text: str) -> bool:
    try:
        value = json.loads(text)
        return isinstance(value, dict) and canonical_json(value) == text
    except (ValueError, RecursionError):
        return False


_text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", "é", "\u2028", "\x7f", "\x00\x1f", '"\\/', "\ud83d\ude00", "\U0001f600", "\ufeff"])
_float = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1e-05, 1e16, 1e22, 5e-324, 1.7976931348623157e308, 812.4, 0.1 + 0.2])
_scalar = (st.none() | st.booleans() | _float | _text
           | st.integers() | st.integers(min_value=2**63 - 2, max_value=2**200))
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_text, inner, max_size=4), max_leaves=12)


def _spellings(value: object) -> st.SearchStrategy[str]:
    """Ways to write ``value`` as JSON, canonical or not."""
    return st.builds(lambda sort, asc, seps: json.dumps(value, sort_keys=sort, ensure_ascii=asc,
                                                        separators=seps, allow_nan=True),
                     st.booleans(), st.booleans(), st.sampled_from([(",", ":"), (", ", ": ")]))


_MUTATIONS = [("e+", "E+"), ("e-", "e-0"), (".0", ".00"), ("\\u00", "\\u00"), ("\\\\", "\\u005c"),
              ('\\"', '\\u0022'), ("\\u00e9", "é"), ("\\u007f", "\x7f"), ("1", "01"), ("0", "-0"),
              ("{", " {"), ("}", "} "), (":", " :"), ('"', '"\\/'), ("\\ud83d", "\\uD83D"),
              ("true", "True"), ("NaN", "nan")]


@settings(max_examples=600, deadline=None)
@given(value=st.dictionaries(_text, _json, max_size=6), data=st.data())
@example(value={"a": 1.0}, data=None)
def test_verdict_equals_decode_and_reencode(value: dict[str, object], data: st.DataObject
                                            ) -> None:
    leaves = _leaves(value)
    if not any(isinstance(v, float) and not math.isfinite(v) for v in leaves):
        text = canonical_json(value)
        assert _canonical_object(text) == _reference(text), text
        # A surrogate pair written as two code points decodes as one character, which may
        # sort elsewhere among the keys: such a text is not canonical by either verdict.
        if not any(0xD800 <= ord(c) <= 0xDFFF for s in leaves + _keys(value)
                   if isinstance(s, str) for c in s):
            assert _canonical_object(text), text
    if data is None:
        return
    text = data.draw(_spellings(value), "spelling")
    old, new = data.draw(st.sampled_from(_MUTATIONS), "mutation")
    if data.draw(st.booleans(), "mutate"):
        text = text.replace(old, new, data.draw(st.integers(1, 3), "count"))
    if data.draw(st.booleans(), "duplicate") and value:
        key = json.dumps(next(iter(value)))
        text = text[:-1] + ("," if text != "{}" else "") + f"{key}:0}}"
    assert _canonical_object(text) == _reference(text), text


@given(st.text(st.sampled_from('{}[]":,.-+0123456789eE\\u tfalsnNI\x7fé '), max_size=40))
@settings(max_examples=600, deadline=None)
def test_verdict_on_arbitrary_text(text: str) -> None:
    assert _canonical_object(text) == _reference(text), text


def test_unencodable_and_undecodable_are_not_canonical() -> None:
    for text in ['{"a":NaN}', '{"a":Infinity}', '{"a":1e400}', "[1]", '"x"', "1", "",
                 '{"a":1} ', ' {"a":1}', '{"a":1}x', '{"a":' + "[" * 100000 + "]" * 100000 + "}"]:
        assert not _canonical_object(text), text[:30]
    assert _canonical_object('{"a":[1,{"b":"\\u00e9"}],"c":1e-05}')


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def _keys(value: object) -> list[object]:
    if isinstance(value, dict):
        return list(value) + [k for v in value.values() for k in _keys(v)]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []
