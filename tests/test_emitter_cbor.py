"""client.cbor: byte-for-byte agreement with server.codec, strict decoding, known answers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.cbor import (
    INT_MAX,
    INT_MIN,
    MAX_NESTING,
    CBORError,
    decode_deterministic,
    encode_deterministic,
)
from server import codec

_TEXT = st.text(max_size=12)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, INT_MAX, -1, -24,
                       -25, -256, -257, -(2**32), -(2**32) - 1, INT_MIN])
    | _TEXT
    | st.binary(max_size=12)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=150, deadline=None)
@given(_VALUES)
def test_encoding_equals_the_servers(value: Any) -> None:
    assert encode_deterministic(value) == codec.encode_deterministic(value)


@settings(max_examples=150, deadline=None)
@given(_VALUES)
def test_decoding_round_trips(value: Any) -> None:
    data = encode_deterministic(value)
    decoded = decode_deterministic(data)
    assert decoded == value
    assert encode_deterministic(decoded) == data  # type: ignore[arg-type]


@settings(max_examples=250, deadline=None)
@given(st.binary(max_size=24))
def test_decoder_accepts_exactly_what_the_servers_strict_decoder_accepts(data: bytes) -> None:
    try:
        expected: object = codec.decode_deterministic(data)
    except codec.CodecError:
        with pytest.raises(CBORError):
            decode_deterministic(data)
        return
    assert decode_deterministic(data) == expected


@settings(max_examples=100, deadline=None)
@given(_VALUES, st.integers(min_value=0, max_value=10_000))
def test_every_truncation_is_refused(value: Any, cut: int) -> None:
    data = encode_deterministic(value)
    end = cut % len(data)
    with pytest.raises(CBORError):
        decode_deterministic(data[:end])


KNOWN = [
    # RFC 8949 Appendix A examples that are deterministic, and the module docstring example.
    (0, "00"),
    (23, "17"),
    (24, "1818"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-1, "20"),
    (-1000, "3903e7"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("IETF", "6449455446"),
    ("\u00fc", "62c3bc"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    ({"b": [2, 3], "a": 1}, "a26161016162820203"),
    ({"aa": 1, "b": 2}, "a2616202626161" + "01"),
]


@pytest.mark.parametrize(("value", "hex_"), KNOWN)
def test_known_answers(value: Any, hex_: str) -> None:
    assert encode_deterministic(value).hex() == hex_
    assert encode_deterministic(decode_deterministic(bytes.fromhex(hex_))) == bytes.fromhex(hex_)  # type: ignore[arg-type]


REFUSED_BYTES = {
    "non-shortest uint": "1817",
    "non-shortest uint16": "190017",
    "non-shortest uint32": "1a0000ffff",
    "non-shortest uint64": "1b00000000ffffffff",
    "non-shortest length": "780161",
    "indefinite array": "9f01ff",
    "indefinite text": "7f6161ff",
    "unsorted keys": "a2616201616101",
    "longer key first": "a2626161016162" + "02",
    "duplicate keys": "a2616101616102",
    "integer key": "a10101",
    "half float": "f93c00",
    "double": "fb3ff0000000000000",
    "tag": "c11a514b67b0",
    "undefined": "f7",
    "simple value": "f0",
    "simple value 32": "f820",
    "break": "ff",
    "reserved info": "1c",
    "trailing bytes": "0000",
    "invalid utf-8": "61ff",
    "truncated": "62c3",
    "huge declared array": "9bffffffffffffffff",
    "negative below int64": "3b8000000000000000",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(REFUSED_BYTES))
def test_refuses_non_deterministic_or_disallowed_input(name: str) -> None:
    with pytest.raises(CBORError):
        decode_deterministic(bytes.fromhex(REFUSED_BYTES[name]))


REFUSED_VALUES: dict[str, object] = {
    "float": 1.0,
    "too large": INT_MAX + 1,
    "too small": INT_MIN - 1,
    "non-text key": {1: 2},
    "lone surrogate": "\ud800",
    "lone surrogate key": {"\udfff": 1},
    "set": {1, 2},
    "object": object(),
}


@pytest.mark.parametrize("name", sorted(REFUSED_VALUES))
def test_refuses_values_without_an_encoding(name: str) -> None:
    with pytest.raises(CBORError):
        encode_deterministic(REFUSED_VALUES[name])  # type: ignore[arg-type]


def test_nesting_is_bounded_both_ways() -> None:
    deep: list[object] = []
    for _ in range(MAX_NESTING + 1):
        deep = [deep]
    with pytest.raises(CBORError):
        encode_deterministic(deep)  # type: ignore[arg-type]
    with pytest.raises(CBORError):
        decode_deterministic(b"\x81" * (MAX_NESTING + 1) + b"\x80")
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(CBORError):
        encode_deterministic(cyclic)  # type: ignore[arg-type]


def test_tuples_and_mappings_encode_like_lists_and_maps() -> None:
    from types import MappingProxyType

    assert encode_deterministic((1, 2)) == encode_deterministic([1, 2])
    assert encode_deterministic(MappingProxyType({"a": 1})) == encode_deterministic({"a": 1})
