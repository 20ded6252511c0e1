"""Tests of server.codec: RFC 8949 known answers, §4.2.1 ordering, round trips and refusals.

Known answers are the examples of RFC 8949 Appendix A that fall inside the event model (the
others, floats, tags, bignums, undefined, simple values and indefinite lengths, appear in the
refusal tables instead). ``cbor2`` (its ``canonical=True`` mode) serves as an independent
reference encoder for the property tests.
"""

from __future__ import annotations

import contextlib
import json
import random
import tracemalloc
from collections.abc import Callable

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.codec import (
    DEFAULT_LIMITS,
    INT_MAX,
    INT_MIN,
    NESTING_CAP,
    CodecError,
    Limits,
    Value,
    decode_cbor,
    decode_cbor_batch,
    decode_deterministic,
    decode_json,
    decode_json_batch,
    encode_deterministic,
    encode_entry,
    to_json_compatible,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ---------------------------------------------------------------------------------


def same(a: object, b: object) -> bool:
    """Type-aware equality: unlike ==, True differs from 1 and bytes from text."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def refusal(call: Callable[[], object]) -> CodecError:
    """Run ``call`` and return the CodecError it raises (fail if it returns)."""
    with pytest.raises(CodecError) as info:
        call()
    return info.value


def h(text: str) -> bytes:
    """Bytes from hex written with spaces for readability."""
    return bytes.fromhex(text.replace(" ", ""))


def in_map(item_hex: str) -> bytes:
    """A one-pair map {"k": <item>} around an encoded item, so decode_cbor accepts the shape."""
    return h("a1 616b" + item_hex)


# --- RFC 8949 Appendix A known answers --------------------------------------------------------

APPENDIX_A: list[tuple[Value, str]] = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (h("01020304"), "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    (
        {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
        "a56161614161626142616361436164614461656145",
    ),
]


@pytest.mark.parametrize(("value", "expected"), APPENDIX_A)
def test_appendix_a_encoding(value: Value, expected: str) -> None:
    assert encode_deterministic(value).hex() == expected


@pytest.mark.parametrize(("value", "expected"), APPENDIX_A)
def test_appendix_a_decoding(value: Value, expected: str) -> None:
    assert same(decode_deterministic(h(expected)), value)
    assert same(decode_cbor(in_map(expected)), {"k": value})


def test_integer_range_boundaries() -> None:
    assert encode_deterministic(INT_MIN).hex() == "3b7fffffffffffffff"
    assert decode_deterministic(h("3b7fffffffffffffff")) == -(2**63)
    assert encode_deterministic(INT_MAX).hex() == "1bffffffffffffffff"
    # Head size steps: each boundary picks the shortest head (RFC 8949 §4.2.1 rule 1).
    for value, expected in [
        (255, "18ff"),
        (256, "190100"),
        (65535, "19ffff"),
        (65536, "1a00010000"),
        (2**32 - 1, "1affffffff"),
        (2**32, "1b0000000100000000"),
        (-24, "37"),
        (-25, "3818"),
        (-256, "38ff"),
        (-257, "390100"),
    ]:
        assert encode_deterministic(value).hex() == expected


def test_string_length_heads() -> None:
    assert encode_deterministic("x" * 23)[:1] == b"\x77"
    assert encode_deterministic("x" * 24)[:2] == b"\x78\x18"
    assert encode_deterministic(b"y" * 256)[:3] == b"\x59\x01\x00"
    assert encode_deterministic(list(range(24)))[:2] == b"\x98\x18"


# --- RFC 8949 §4.2.1 ordering -----------------------------------------------------------------


def test_map_keys_sorted_by_encoded_bytes_not_by_python_string_order() -> None:
    # Encodings: "b" = 61 62, "z" = 61 7a, "aa" = 62 61 61: the shorter key sorts first even
    # though Python orders "aa" < "b" < "z".
    value = {"aa": 3, "z": 2, "b": 1}
    assert encode_deterministic(value).hex() == "a3" + "616201" + "617a02" + "62616103"


def test_map_keys_length_boundary_and_non_ascii_order() -> None:
    k23, k24 = "a" * 23, "a" * 24
    encoded = encode_deterministic({k24: 1, "é": 2, k23: 3, "zz": 4})
    expected = (
        h("a4")
        + h("627a7a04")  # "zz" = 62 7a 7a
        + h("62c3a902")  # "é" = 62 c3 a9 (UTF-8 bytes order after 7a)
        + h("77")
        + k23.encode()
        + h("03")
        + h("7818")
        + k24.encode()
        + h("01")
    )
    assert encoded == expected


def test_nested_maps_sorted_at_every_level() -> None:
    value: dict[str, Value] = {"outer": {"y": 1, "x": [{"d": 1, "c": 2}]}, "a": None}
    assert encode_deterministic(value).hex() == (
        "a2" "6161f6" "656f75746572" "a2" "6178" "81a2" "616302" "616401" "617901"
    )


# --- property tests ----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.text(max_size=20)
)


def containers(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(children, max_size=5) | st.dictionaries(
        st.text(max_size=8), children, max_size=5
    )


values = st.recursive(scalars, containers, max_leaves=20)
json_values = st.recursive(json_scalars, containers, max_leaves=20)
events = st.dictionaries(
    st.text(max_size=8), st.recursive(scalars, containers, max_leaves=6), max_size=6
)
json_events = st.dictionaries(
    st.text(max_size=8), st.recursive(json_scalars, containers, max_leaves=6), max_size=6
)


@SETTINGS
@given(values)
def test_round_trip_through_strict_decoder(value: Value) -> None:
    encoded = encode_deterministic(value)
    assert same(decode_deterministic(encoded), value)


@SETTINGS
@given(values)
def test_matches_reference_encoder(value: Value) -> None:
    # cbor2's canonical mode: shortest heads, definite lengths, keys sorted length-first then
    # bytewise, which equals §4.2.1 bytewise order for text keys.
    assert encode_deterministic(value) == cbor2.dumps(value, canonical=True)


@SETTINGS
@given(events, st.randoms(use_true_random=False))
def test_equal_values_give_equal_bytes_whatever_the_insertion_order(
    event: dict[str, Value], rng: random.Random
) -> None:
    def shuffled(value: object) -> object:
        if isinstance(value, dict):
            keys = list(value)
            rng.shuffle(keys)
            return {k: shuffled(value[k]) for k in keys}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    assert encode_deterministic(shuffled(event)) == encode_deterministic(event)  # type: ignore[arg-type]


@SETTINGS
@given(events)
def test_decode_cbor_of_encoding_is_identity(event: dict[str, Value]) -> None:
    assert same(decode_cbor(encode_deterministic(event)), event)


@SETTINGS
@given(json_events)
def test_json_input_equals_cbor_input(event: dict[str, Value]) -> None:
    from_json = decode_json(json.dumps(event).encode())
    from_cbor = decode_cbor(encode_deterministic(event))
    assert same(from_json, from_cbor)
    assert encode_deterministic(from_json) == encode_deterministic(from_cbor)


def loose_encode(value: object, rng: random.Random) -> bytes:
    """Encode ``value`` as valid but non-deterministic CBOR: random head widths, key order."""

    def head(major: int, argument: int) -> bytes:
        widths = [w for w, limit in ((0, 24), (1, 2**8), (2, 2**16), (4, 2**32), (8, 2**64))
                  if argument < limit]
        width = rng.choice(widths)
        if width == 0:
            return bytes([major << 5 | argument])
        info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
        return bytes([major << 5 | info]) + argument.to_bytes(width, "big")

    if value is None:
        return b"\xf6"
    if value is True or value is False:
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        data = value.encode()
        return head(3, len(data)) + data
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(loose_encode(v, rng) for v in value)
    assert isinstance(value, dict)
    keys = list(value)
    rng.shuffle(keys)
    return head(5, len(keys)) + b"".join(
        loose_encode(k, rng) + loose_encode(value[k], rng) for k in keys
    )


@SETTINGS
@given(events, st.randoms(use_true_random=False))
def test_non_deterministic_input_is_accepted_and_re_encoded(
    event: dict[str, Value], rng: random.Random
) -> None:
    loose = loose_encode(event, rng)
    decoded = decode_cbor(loose)
    assert same(decoded, event)
    canonical = encode_deterministic(decoded)
    if loose == canonical:
        assert same(decode_deterministic(loose), event)
    else:
        assert refusal(lambda: decode_deterministic(loose)).problem_type == "not-deterministic"


@SETTINGS
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_the_decoders(data: bytes) -> None:
    for decoder in (decode_cbor, decode_deterministic, decode_json, decode_cbor_batch):
        with contextlib.suppress(CodecError):
            decoder(data)


# --- JSON refusals ------------------------------------------------------------------------------

JSON_REFUSALS: list[tuple[str, bytes, str, str | None]] = [
    ("fraction", b'{"a": 1.0}', "float-not-allowed", "/a"),
    ("exponent", b'{"a": 1e3}', "float-not-allowed", "/a"),
    ("upper exponent", b'{"a": 1E3}', "float-not-allowed", "/a"),
    ("negative zero float", b'{"a": -0.0}', "float-not-allowed", "/a"),
    ("nested float", b'{"a": {"b": [0, 2.5]}}', "float-not-allowed", "/a/b/1"),
    ("NaN", b'{"a": NaN}', "float-not-allowed", "/a"),
    ("Infinity", b'{"a": Infinity}', "float-not-allowed", "/a"),
    ("-Infinity", b'{"a": -Infinity}', "float-not-allowed", "/a"),
    ("duplicate top key", b'{"a": 1, "a": 2}', "duplicate-key", "/a"),
    ("duplicate nested key", b'{"x": [{"k": 1, "k": 1}]}', "duplicate-key", "/x/0/k"),
    ("escaped pointer", b'{"a/b": {"c~d": 1.5}}', "float-not-allowed", "/a~1b/c~0d"),
    ("2**64", b'{"a": 18446744073709551616}', "unsupported-type", "/a"),
    ("-2**63-1", b'{"a": -9223372036854775809}', "unsupported-type", "/a"),
    ("5000 digits", b'{"a": ' + b"9" * 5000 + b"}", "unsupported-type", "/a"),
    ("top-level array", b"[1, 2]", "bad-event", ""),
    ("top-level string", b'"a"', "bad-event", ""),
    ("top-level number", b"7", "bad-event", ""),
    ("top-level null", b"null", "bad-event", ""),
    ("invalid UTF-8", b'{"a": "\xc3\x28"}', "bad-json", None),
    ("overlong UTF-8", b'{"a": "\xc0\xaf"}', "bad-json", None),
    ("UTF-8 BOM", b'\xef\xbb\xbf{"a": 1}', "bad-json", None),
    ("lone surrogate escape", b'{"a": "\\ud800"}', "bad-json", "/a"),
    ("lone surrogate key", b'{"\\udc00": 1}', "bad-json", ""),
    ("raw control character", b'{"a": "x\ny"}', "bad-json", None),
    ("trailing data", b'{"a": 1} {}', "bad-json", None),
    ("truncated", b'{"a": [1, 2', "bad-json", None),
    ("empty", b"", "bad-json", None),
    ("single quotes", b"{'a': 1}", "bad-json", None),
    ("leading plus", b'{"a": +1}', "bad-json", None),
    ("leading zero", b'{"a": 01}', "bad-json", None),
    ("deep arrays", b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "too-deep", None),
    ("deep unclosed", b"[" * 10_000, "too-deep", None),
    ("deep objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "too-deep", None),
    ("17 levels", b'{"a":' + b"[" * 16 + b"]" * 16 + b"}", "too-deep", None),
    ("oversize body", b'{"a": "' + b"x" * 70_000 + b'"}', "too-large", None),
    ("long string", b'{"a": "' + b"x" * 8193 + b'"}', "too-large", "/a"),
    ("long UTF-8 string", b'{"a": "' + "é".encode() * 4097 + b'"}', "too-large", "/a"),
    ("long key", b'{"' + b"k" * 8193 + b'": 1}', "too-large", ""),
    ("1001 elements", b'{"a": [' + b",".join([b"0"] * 1001) + b"]}", "too-large", "/a"),
    (
        "1001 keys",
        b"{" + b",".join(b'"k%d": 0' % i for i in range(1001)) + b"}",
        "too-large",
        "",
    ),
    (
        "10001 items",
        b'{"a": [' + b",".join([b"[" + b",".join([b"0"] * 500) + b"]"] * 20) + b"]}",
        "too-large",
        None,
    ),
]


@pytest.mark.parametrize(
    ("body", "problem_type", "pointer"),
    [pytest.param(b, t, p, id=name) for name, b, t, p in JSON_REFUSALS],
)
def test_json_refusals(body: bytes, problem_type: str, pointer: str | None) -> None:
    error = refusal(lambda: decode_json(body))
    assert error.problem_type == problem_type
    if pointer is not None:
        assert error.pointer == pointer


def test_json_depth_limit_is_exact() -> None:
    fifteen: Value = []
    for _ in range(14):
        fifteen = [fifteen]
    assert decode_json(b'{"a":' + b"[" * 15 + b"]" * 15 + b"}") == {"a": fifteen}
    limits = Limits(max_depth=3)
    assert decode_json(b'{"a": {"b": [1]}}', limits) == {"a": {"b": [1]}}
    assert refusal(lambda: decode_json(b'{"a": {"b": [[1]]}}', limits)).problem_type == "too-deep"


def test_json_brackets_inside_strings_do_not_count_as_depth() -> None:
    text = "[{" * 2000 + '\\"' + "]}" * 1000
    body = json.dumps({"a": text}).encode()
    assert decode_json(body) == {"a": text}


def test_json_limits_accept_exact_boundaries() -> None:
    assert decode_json(b'{"a": "' + b"x" * 8192 + b'"}')["a"] == "x" * 8192
    assert len(decode_json(b'{"a": [' + b",".join([b"0"] * 1000) + b"]}")["a"]) == 1000  # type: ignore[arg-type]
    assert decode_json(b'{"a": 18446744073709551615, "b": -9223372036854775808}') == {
        "a": 2**64 - 1,
        "b": -(2**63),
    }


def test_json_accepts_whitespace_surrogate_pairs_and_negative_zero_integer() -> None:
    assert decode_json(b' \n{"a" : "\\ud83d\\ude00", "b": -0}\t') == {"a": "\U0001f600", "b": 0}


def test_entry_too_large_from_json() -> None:
    limits = Limits(max_body_bytes=200_000)
    body = json.dumps({f"k{i}": "x" * 8000 for i in range(9)}).encode()
    error = refusal(lambda: decode_json(body, limits))
    assert error.problem_type == "entry-too-large"
    small = Limits(max_entry_bytes=20)
    assert decode_json(b'{"a": "0123456789abcdef"}', small) == {"a": "0123456789abcdef"}
    assert refusal(lambda: decode_json(b'{"a": "0123456789abcdefg"}', small)).problem_type == (
        "entry-too-large"
    )


@SETTINGS
@given(json_events)
def test_json_size_accounting_matches_the_encoding(event: dict[str, Value]) -> None:
    body = json.dumps(event).encode()
    size = len(encode_deterministic(event))
    assert decode_json(body, Limits(max_entry_bytes=size)) == event
    if size > 1:
        smaller = Limits(max_entry_bytes=size - 1)
        assert refusal(lambda: decode_json(body, smaller)).problem_type == "entry-too-large"


# --- CBOR refusals ------------------------------------------------------------------------------

TAG_32_URI = "d82076687474703a2f2f7777772e6578616d706c652e636f6d"  # 32("http://www.example.com")

CBOR_REFUSALS: list[tuple[str, bytes, str, str | None]] = [
    ("half float", in_map("f93c00"), "float-not-allowed", "/k"),
    ("single float", in_map("fa47c35000"), "float-not-allowed", "/k"),
    ("double float", in_map("fb3ff199999999999a"), "float-not-allowed", "/k"),
    ("half NaN", in_map("f97e00"), "float-not-allowed", "/k"),
    ("half Infinity", in_map("f97c00"), "float-not-allowed", "/k"),
    ("tag 0", in_map("c074323031332d30332d32315432303a30343a30305a"), "unsupported-type", "/k"),
    ("tag 1 epoch", in_map("c11a514b67b0"), "unsupported-type", "/k"),
    ("bignum tag 2", in_map("c249010000000000000000"), "unsupported-type", "/k"),
    ("tag 32", in_map(TAG_32_URI), "unsupported-type", "/k"),
    ("tag at top", h("d9d9f7a0"), "bad-event", ""),
    ("undefined", in_map("f7"), "unsupported-type", "/k"),
    ("simple(16)", in_map("f0"), "unsupported-type", "/k"),
    ("simple(255)", in_map("f8ff"), "unsupported-type", "/k"),
    ("simple(32)", in_map("f820"), "unsupported-type", "/k"),
    ("-2**63-1", in_map("3b8000000000000000"), "unsupported-type", "/k"),
    ("-2**64", in_map("3bffffffffffffffff"), "unsupported-type", "/k"),
    ("integer key", h("a10102"), "unsupported-type", ""),
    ("bytes key", h("a1416101"), "unsupported-type", ""),
    ("array key", h("a18001"), "unsupported-type", ""),
    ("nested integer key", in_map("a10102"), "unsupported-type", "/k"),
    ("duplicate key", h("a2 6161 01 6161 02"), "duplicate-key", "/a"),
    ("duplicate key, wider head", h("a2 6161 01 780161 02"), "duplicate-key", "/a"),
    ("nested duplicate", in_map("81a2616101616102"), "duplicate-key", "/k/0/a"),
    ("invalid UTF-8", in_map("62c328"), "bad-cbor", "/k"),
    ("overlong UTF-8", in_map("62c0af"), "bad-cbor", "/k"),
    ("encoded surrogate", in_map("63eda080"), "bad-cbor", "/k"),
    ("invalid UTF-8 key", h("a162c32801"), "bad-cbor", None),
    ("trailing bytes", h("a0 00"), "bad-cbor", None),
    ("truncated head", in_map("19 01"), "bad-cbor", "/k"),
    ("truncated string", in_map("65 6162"), "bad-cbor", "/k"),
    ("truncated map", h("a2 6161 01"), "bad-cbor", None),
    ("empty", b"", "bad-cbor", None),
    ("indefinite bytes", in_map("5f42010243030405ff"), "bad-cbor", "/k"),
    ("indefinite text", in_map("7f657374726561646d696e67ff"), "bad-cbor", "/k"),
    ("indefinite array", in_map("9f018202039f0405ffff"), "bad-cbor", "/k"),
    ("indefinite map", h("bf61610161629f0203ffff"), "bad-cbor", None),
    ("ai 31 on an integer", in_map("1f"), "bad-cbor", "/k"),
    ("reserved ai 28", in_map("1c"), "bad-cbor", "/k"),
    ("reserved ai 30 on a tag", in_map("de"), "bad-cbor", "/k"),
    ("reserved simple ai 28", in_map("fc"), "bad-cbor", "/k"),
    ("stray break", in_map("ff"), "bad-cbor", "/k"),
    ("top-level array", h("83010203"), "bad-event", ""),
    ("top-level integer", h("00"), "bad-event", ""),
    ("declared 2**60 bytes", in_map("5b1000000000000000"), "bad-cbor", "/k"),
    ("declared 2**60 text", in_map("7b1000000000000000"), "bad-cbor", "/k"),
    ("declared 2**60 array", in_map("9b1000000000000000"), "bad-cbor", "/k"),
    ("declared 2**60 map", h("bb1000000000000000"), "bad-cbor", None),
    ("declared 2**64-1 array", in_map("9bffffffffffffffff"), "bad-cbor", "/k"),
    ("deep arrays", in_map("81" * 10_000 + "00"), "too-deep", None),
    ("deep maps", h("a1616b" * 10_000 + "00"), "too-deep", None),
    ("17 levels", in_map("81" * 16 + "00"), "too-deep", None),
    ("oversize body", in_map("5a00011170" + "00" * 70_000), "too-large", None),
    ("long bytes", in_map("592001" + "00" * 8193), "too-large", "/k"),
    ("long text", in_map("792001" + "61" * 8193), "too-large", "/k"),
    ("1001 elements", in_map("9903e9" + "00" * 1001), "too-large", "/k"),
    (
        "10001 items",
        in_map("94" + ("9901f4" + "00" * 500) * 20),
        "too-large",
        None,
    ),
]


@pytest.mark.parametrize(
    ("body", "problem_type", "pointer"),
    [pytest.param(b, t, p, id=name) for name, b, t, p in CBOR_REFUSALS],
)
def test_cbor_refusals(body: bytes, problem_type: str, pointer: str | None) -> None:
    error = refusal(lambda: decode_cbor(body))
    assert error.problem_type == problem_type
    if pointer is not None:
        assert error.pointer == pointer


def test_declared_huge_lengths_allocate_nothing() -> None:
    bodies = [in_map(head + "1000000000000000") for head in ("5b", "7b", "9b")]
    bodies.append(h("bb1000000000000000"))
    tracemalloc.start()
    try:
        for body in bodies:
            assert refusal(lambda body=body: decode_cbor(body)).problem_type == "bad-cbor"  # type: ignore[misc]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000


def test_over_limit_lengths_are_refused_before_reading_them() -> None:
    # 9,000 declared and present: over max_string_bytes, so refused as too large.
    assert refusal(lambda: decode_cbor(in_map("592328" + "00" * 9000))).problem_type == "too-large"


def test_every_truncation_of_a_valid_event_is_refused() -> None:
    event: dict[str, Value] = {
        "iss": "https://as.example",
        "n": [1, 300, -70000, b"\x00" * 30],
        "ok": True,
    }
    encoded = encode_deterministic(event)
    for end in range(len(encoded)):
        assert refusal(lambda end=end: decode_cbor(encoded[:end])).problem_type in (  # type: ignore[misc]
            "bad-cbor",
            "bad-event",
        )
    assert decode_cbor(encoded) == event


def test_cbor_non_deterministic_forms_are_accepted() -> None:
    assert decode_cbor(h("a1 6161 1800")) == {"a": 0}
    assert decode_cbor(h("a1 780161 1b0000000000000001")) == {"a": 1}
    unsorted = h("a2 6162 01 6161 02")
    assert decode_cbor(unsorted) == {"b": 1, "a": 2}
    assert encode_deterministic(decode_cbor(unsorted)).hex() == "a2616102616201"


def test_cbor_limits_accept_exact_boundaries() -> None:
    assert decode_cbor(in_map("59 2000" + "00" * 8192)) == {"k": b"\x00" * 8192}
    assert decode_cbor(in_map("81" * 15 + "00")) is not None
    assert decode_cbor(in_map("3b7fffffffffffffff")) == {"k": -(2**63)}
    assert decode_cbor(in_map("1bffffffffffffffff")) == {"k": 2**64 - 1}


def test_entry_too_large_from_cbor() -> None:
    limits = Limits(max_body_bytes=200_000)
    event = {f"k{i}": "x" * 8000 for i in range(9)}
    error = refusal(lambda: decode_cbor(encode_deterministic(event), limits))
    assert error.problem_type == "entry-too-large"
    # The bound is on the re-encoded size, not on the (here wider) input.
    loose = h("a1 6161 1b0000000000000000")
    assert decode_cbor(loose, Limits(max_entry_bytes=4)) == {"a": 0}


# --- strict decoder ---------------------------------------------------------------------------

NOT_DETERMINISTIC: list[tuple[str, str]] = [
    ("non-shortest integer", "1800"),
    ("non-shortest 8-byte integer", "1b0000000000000001"),
    ("non-shortest negative", "3800"),
    ("non-shortest string length", "780161"),
    ("non-shortest bytes length", "59000161"),
    ("non-shortest array count", "980100"),
    ("non-shortest map count", "b800"),
    ("unsorted keys", "a2 6162 01 6161 02"),
    ("length-first order broken", "a2 626161 01 6162 02"),
    ("non-shortest key head", "a1 780161 01"),
]


@pytest.mark.parametrize(
    "encoded", [pytest.param(e, id=name) for name, e in NOT_DETERMINISTIC]
)
def test_decode_deterministic_refuses_non_canonical_forms(encoded: str) -> None:
    assert refusal(lambda: decode_deterministic(h(encoded))).problem_type == "not-deterministic"


@pytest.mark.parametrize(
    ("encoded", "problem_type"),
    [
        ("a2 6161 01 6161 02", "duplicate-key"),
        ("00 00", "bad-cbor"),
        ("f93c00", "float-not-allowed"),
        ("c0 60", "unsupported-type"),
        ("f7", "unsupported-type"),
        ("9f ff", "bad-cbor"),
        ("5b1000000000000000", "bad-cbor"),
        ("a1 01 02", "unsupported-type"),
        ("", "bad-cbor"),
    ],
)
def test_decode_deterministic_refusals(encoded: str, problem_type: str) -> None:
    assert refusal(lambda: decode_deterministic(h(encoded))).problem_type == problem_type


def test_nesting_cap_is_shared_by_encoder_and_strict_decoder() -> None:
    value: Value = 0
    for _ in range(NESTING_CAP):
        value = [value]
    encoded = encode_deterministic(value)
    assert decode_deterministic(encoded) == value
    assert refusal(lambda: encode_deterministic([value])).problem_type == "too-deep"
    assert refusal(lambda: decode_deterministic(b"\x81" + encoded)).problem_type == "too-deep"
    assert refusal(lambda: decode_deterministic(b"\x81" * 10_000 + b"\x00")).problem_type == (
        "too-deep"
    )


# --- encoder refusals --------------------------------------------------------------------------


def test_encoder_refusals() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    cases: list[tuple[object, str]] = [
        (1.0, "float-not-allowed"),
        ({"a": float("nan")}, "float-not-allowed"),
        ({1: "a"}, "unsupported-type"),
        ({b"a": 1}, "unsupported-type"),
        (2**64, "unsupported-type"),
        (-(2**63) - 1, "unsupported-type"),
        ({"a": {1, 2}}, "unsupported-type"),
        (bytearray(b"a"), "unsupported-type"),
        ("\ud800", "unsupported-type"),
        ({"\udc00": 1}, "unsupported-type"),
        (cyclic, "too-deep"),
    ]
    for value, problem_type in cases:
        assert refusal(lambda value=value: encode_deterministic(value)).problem_type == problem_type  # type: ignore[misc]


def test_encoder_accepts_tuples_and_mappings() -> None:
    from types import MappingProxyType

    assert encode_deterministic((1, 2)) == encode_deterministic([1, 2])
    assert encode_deterministic(MappingProxyType({"b": 1, "a": 2})) == encode_deterministic(
        {"a": 2, "b": 1}
    )


def test_encode_entry_limit() -> None:
    assert encode_entry({"a": "x" * 60_000}) == encode_deterministic({"a": "x" * 60_000})
    error = refusal(lambda: encode_entry({"a": "x" * 65_535}))
    assert error.problem_type == "entry-too-large"
    assert len(encode_entry({"a": "x" * (65_535 - 6)})) == 65_535


# --- batches ----------------------------------------------------------------------------------


def test_json_batch_reports_each_event() -> None:
    body = b'[{"a": 1}, {"b": 1.5}, [1], {"c": {"c": 1, "c": 2}}, {"d": "x"}]'
    results = decode_json_batch(body)
    assert results[0] == {"a": 1}
    assert isinstance(results[1], CodecError)
    assert (results[1].problem_type, results[1].pointer) == ("float-not-allowed", "/b")
    assert isinstance(results[2], CodecError)
    assert results[2].problem_type == "bad-event"
    assert isinstance(results[3], CodecError)
    assert (results[3].problem_type, results[3].pointer) == ("duplicate-key", "/c/c")
    assert results[4] == {"d": "x"}


@pytest.mark.parametrize(
    ("body", "problem_type"),
    [
        (b'{"a": 1}', "bad-event"),
        (b"[{}, ", "bad-json"),
        (b"[" + b",".join([b"{}"] * 1001) + b"]", "too-large"),
        (b"[" + b"[" * 100 + b"]" * 100 + b"]", "too-deep"),
    ],
)
def test_json_batch_refusals(body: bytes, problem_type: str) -> None:
    assert refusal(lambda: decode_json_batch(body)).problem_type == problem_type


def test_json_batch_depth_is_counted_per_event() -> None:
    event = b'{"a":' + b"[" * 15 + b"]" * 15 + b"}"
    assert decode_json_batch(b"[" + event + b"]") == [decode_json(event)]


def test_cbor_batch_reports_each_event() -> None:
    good = encode_deterministic({"a": 1})
    body = h("84") + good + in_map("f93c00") + h("c0 60") + h("a2 6161 01 6161 02")
    results = decode_cbor_batch(body)
    assert results[0] == {"a": 1}
    assert [r.problem_type for r in results[1:] if isinstance(r, CodecError)] == [
        "float-not-allowed",
        "bad-event",
        "duplicate-key",
    ]


@pytest.mark.parametrize(
    ("body", "problem_type"),
    [
        ("a0", "bad-event"),
        ("82 a0", "bad-cbor"),
        ("81 a0 00", "bad-cbor"),
        ("81 bf ff", "bad-cbor"),
        ("9f a0 ff", "bad-cbor"),
        ("9b1000000000000000", "too-large"),
        ("81 a1 6161 5b1000000000000000", "bad-cbor"),
        ("", "bad-cbor"),
    ],
)
def test_cbor_batch_refusals(body: str, problem_type: str) -> None:
    assert refusal(lambda: decode_cbor_batch(h(body))).problem_type == problem_type


def test_cbor_batch_limits_each_event_body() -> None:
    big = encode_deterministic({"a": "x" * 8000})
    limits = Limits(max_body_bytes=len(big) - 1)
    (result,) = decode_cbor_batch(h("81") + big, limits)
    assert isinstance(result, CodecError)
    assert result.problem_type == "too-large"


# --- JSON output, secrets, limits ---------------------------------------------------------------


def test_to_json_compatible() -> None:
    value = {"sig": b"\x01\x02", "list": (b"", 1, None, True, {"x": [b"\xff"]})}
    assert to_json_compatible(value) == {
        "sig": "AQI=",
        "list": ["", 1, None, True, {"x": ["/w=="]}],
    }
    assert refusal(lambda: to_json_compatible({"a": 1.5})).problem_type == "unsupported-type"  # type: ignore[dict-item]
    assert refusal(lambda: to_json_compatible({1: 1})).problem_type == "unsupported-type"  # type: ignore[dict-item]


SECRET = "tok_SECRET_3kq9ZpXr7VbN2mL5wY8cT1"


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"access_token": SECRET, "n": 1.5}).encode(),
        json.dumps({"access_token": SECRET, "n": 2**70}).encode(),
        ('{"access_token": "' + SECRET + '", "access_token": "' + SECRET + '"}').encode(),
        json.dumps({"access_token": SECRET * 400}).encode(),
        ('{"access_token": "' + SECRET + '\\ud800"}').encode(),
        ('{"access_token": "' + SECRET + '"').encode(),
        ('{"access_token": "' + SECRET + '\x01"}').encode(),
        b'{"access_token": "' + SECRET.encode() + b'\xff"}',
    ],
)
def test_json_errors_never_echo_values(body: bytes) -> None:
    error = refusal(lambda: decode_json(body))
    assert SECRET not in str(error)
    assert SECRET[:12] not in str(error)
    assert SECRET not in (error.pointer or "")


@pytest.mark.parametrize(
    "event_hex_suffix",
    ["f93c00", "c0 60", "62c328", "5b1000000000000000", "f7"],
)
def test_cbor_errors_never_echo_values(event_hex_suffix: str) -> None:
    secret = SECRET.encode()
    body = h("a2 6c") + b"access_token" + bytes([0x60 | len(secret)]) + secret
    body += h("616e" + event_hex_suffix)
    error = refusal(lambda: decode_cbor(body))
    assert SECRET not in str(error)
    assert SECRET[:12] not in str(error)


def test_limits_validation() -> None:
    assert Limits() == DEFAULT_LIMITS
    for bad in (
        {"max_depth": 0},
        {"max_depth": 129},
        {"max_entry_bytes": 65_536},
        {"max_items": True},
        {"max_body_bytes": -1},
    ):
        with pytest.raises(ValueError, match="Limits"):
            Limits(**bad)
