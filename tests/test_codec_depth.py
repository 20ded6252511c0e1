"""Fast paths of the codec: the JSON depth pre-check, the encoder's key orders, inline checks.

:func:`server.codec._parse_json` refuses deep input before ``json.loads`` sees it, with a fast
scan that is exact for valid JSON and the reference scan wherever they may disagree (the text is
deep or not JSON). These tests compare the two on generated valid JSON, and check that the
refusal of arbitrary text (brackets, quotes, backslashes) is the one the reference alone gives.
The encoder's cached key orders must give cbor2's canonical bytes (the same order for text keys)
however often a key set repeats or the cache is emptied, and the checker's inline handling of
short keys and ASCII text must keep every limit and pointer.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.codec import (
    CodecError,
    Limits,
    _json_too_deep,
    _json_too_deep_fast,
    _parse_json,
    decode_json,
    encode_deterministic,
)

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


# -- the encoder's cache of key orders and the checker's inline paths ---------------------------


class _Key(str):
    """A str subclass with its own hash: looked up by the original key object."""

    __slots__ = ()

    def __hash__(self) -> int:
        return 7


def test_key_orders_cached_per_key_tuple_give_the_reference_bytes() -> None:
    for round_ in range(3):  # cold cache, then warm
        for n in range(300):  # more key sets than the cache holds: it is emptied and refilled
            event: dict[str, Any] = {
                f"k{n}": n,
                "b": "x" * (n % 30),
                "aa": [n],
                "a": {"z": round_, "y": None},
            }
            reordered = dict(reversed(list(event.items())))
            expected = cbor2.dumps(event, canonical=True)
            assert encode_deterministic(event) == expected
            assert encode_deterministic(reordered) == expected
    odd: dict[str, Any] = {_Key("b"): 1, _Key("a"): "x", "c" * 70: -5}
    assert encode_deterministic(odd) == cbor2.dumps(
        {"b": 1, "a": "x", "c" * 70: -5}, canonical=True
    )
    assert encode_deterministic(odd) == encode_deterministic(odd)


def test_checker_inline_paths_keep_every_limit() -> None:
    tight = Limits(max_string_bytes=3, max_total_items=5)
    with pytest.raises(CodecError) as caught:
        decode_json(b'{"abcd": 1}', tight)  # a short ASCII key over the string limit
    assert caught.value.problem_type == "too-large"
    with pytest.raises(CodecError) as caught:
        decode_json(b'{"a": "abcd"}', tight)
    assert (caught.value.problem_type, caught.value.pointer) == ("too-large", "/a")
    three = b'{"a": "x", "b": "y", "c": "z"}'
    with pytest.raises(CodecError) as caught:
        decode_json(three, tight)  # the 6th item is the key "c": the map's pointer
    assert (caught.value.problem_type, caught.value.pointer) == ("too-large", "")
    with pytest.raises(CodecError) as caught:
        decode_json(three, Limits(max_total_items=6))  # the 7th is the value "z"
    assert (caught.value.problem_type, caught.value.pointer) == ("too-large", "/c")
    assert decode_json(b'{"a": "x", "b": "\\u00e9"}', tight) == {"a": "x", "b": "\u00e9"}
