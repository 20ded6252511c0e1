"""The JSON depth pre-check: the fast scan agrees with the reference scan where it is trusted.

:func:`server.codec._parse_json` refuses deep input before ``json.loads`` sees it, with a fast
scan that is exact for valid JSON and the reference scan wherever they may disagree (the text is
deep or not JSON). These tests compare the two on generated valid JSON, and check that the
refusal of arbitrary text (brackets, quotes, backslashes) is the one the reference alone gives.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from server.codec import CodecError, _json_too_deep, _json_too_deep_fast, _parse_json

_TEXT = st.text(alphabet='ab"\\[]{}\n\u00e9', max_size=6)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_TEXT, children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_JSON, st.integers(0, 6), st.booleans())
def test_fast_scan_is_exact_on_valid_json(value: object, max_depth: int, ascii: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii)
    assert _json_too_deep_fast(text, max_depth) == _json_too_deep(text, max_depth)


def _reference_outcome(text: str, max_depth: int) -> str:
    """What the parse gave with the reference scan alone: too-deep, bad-json or ok."""
    if _json_too_deep(text, max_depth):
        return "too-deep"
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return "bad-json"
    except RecursionError:
        return "too-deep"
    return "ok"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='[]{}"\\a,:1 ', max_size=24), st.integers(0, 4))
def test_refusals_match_the_reference_scan(text: str, max_depth: int) -> None:
    try:
        _parse_json(text.encode(), 1000, max_depth)
        outcome = "ok"
    except CodecError as error:
        outcome = error.problem_type
    assert outcome == _reference_outcome(text, max_depth)


def test_escaped_quotes_and_backslashes_do_not_end_strings() -> None:
    text = json.dumps([{"a": 'x\\"[[[[', "b": "\\\\"}, "\\"])
    assert not _json_too_deep_fast(text, 2)
    assert _json_too_deep_fast(json.dumps([[['"\\']]]), 2)
