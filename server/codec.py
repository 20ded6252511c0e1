"""Bounded decoding of submitted events and RFC 8949 §4.2.1 deterministic CBOR.

The submit path accepts one event as JSON (``application/json``) or CBOR (``application/cbor``)
and logs its deterministic CBOR encoding. At this layer an event is only *a bounded map of
allowed types*:

* the top level is a map whose keys are text strings;
* values are text strings (valid UTF-8), byte strings (CBOR only), integers in
  ``[-2**63, 2**64 - 1]``, booleans, null, arrays, and maps whose keys are text strings;
* never floats (JSON numbers with a fraction or an exponent, such as ``1.0`` or ``1e3``, count as
  floats), NaN or Infinity, CBOR tags, ``undefined`` or other simple values, indefinite-length
  items, or duplicate map keys;
* every size is bounded by :class:`Limits`: body bytes, nesting depth, items per array or map,
  string length, total data items, and the size of the deterministic encoding (a tlog-tiles entry
  is at most 65,535 bytes).

Input CBOR does **not** have to be deterministic itself: any well-formed definite-length encoding
of an allowed value is accepted (non-shortest integer and length heads, map keys in any order) and
re-encoded deterministically, the way JSON input is. Duplicate keys are always refused, whatever
their encoding. :func:`decode_deterministic` is the strict reader for bytes the log wrote itself:
it refuses every encoding that :func:`encode_deterministic` would not have produced.

The CBOR reader is written here rather than taken from ``cbor2`` so that every limit is enforced
*before* anything is allocated: a declared length of ``2**60`` is refused from its head, and no
read goes past the end of the body.

Errors: everything refused raises :class:`CodecError` (a ``ValueError``) carrying a stable
``problem_type`` slug, a ``detail`` that names the rule broken and never echoes an input value,
and a JSON-pointer ``pointer`` to the offending field where there is one.

====================  =================================================================
problem_type          raised for
====================  =================================================================
bad-json              not UTF-8, not JSON, a lone surrogate escape
bad-cbor              not well-formed CBOR, truncated, trailing bytes, invalid UTF-8,
                      indefinite lengths, reserved additional information
not-deterministic     :func:`decode_deterministic` only: a valid but non-canonical encoding
bad-event             the top level is not a map (or a batch is not an array)
float-not-allowed     any float, ``NaN``, ``Infinity``, JSON ``1.0`` / ``1e3``
unsupported-type      tags, ``undefined``, simple values, non-text map keys, integers
                      outside ``[-2**63, 2**64 - 1]``, Python values with no CBOR form
duplicate-key         a map key that appears twice
too-deep              nesting deeper than ``Limits.max_depth``
too-large             body, string, per-container or total item count over its limit
entry-too-large       deterministic encoding over ``Limits.max_entry_bytes``
====================  =================================================================

Example::

    >>> encode_deterministic(decode_json(b'{"b": [2, 3], "a": 1}')).hex()
    'a26161016162820203'
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import accumulate
from typing import Any, Final, TypeAlias, cast

__all__ = [
    "DEFAULT_LIMITS",
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH_CAP",
    "MAX_ENTRY_SIZE",
    "NESTING_CAP",
    "CodecError",
    "Encodable",
    "JSONValue",
    "Limits",
    "Value",
    "decode_cbor",
    "decode_cbor_batch",
    "decode_deterministic",
    "decode_json",
    "decode_json_batch",
    "encode_deterministic",
    "encode_entry",
    "to_json_compatible",
]

Value: TypeAlias = "str | bytes | int | bool | list[Value] | dict[str, Value] | None"
"""A decoded event value: what :func:`decode_json` and :func:`decode_cbor` return."""

Encodable: TypeAlias = (
    "str | bytes | int | bool | Sequence[Encodable] | Mapping[str, Encodable] | None"
)
"""What :func:`encode_deterministic` accepts: :data:`Value`, with tuples and any mapping too."""

JSONValue: TypeAlias = "str | int | bool | list[JSONValue] | dict[str, JSONValue] | None"
"""A value :func:`json.dumps` can write without floats: what :func:`to_json_compatible` returns."""

INT_MIN: Final = -(2**63)
"""Smallest integer an event may carry."""
INT_MAX: Final = 2**64 - 1
"""Largest integer an event may carry (the largest CBOR major type 0 argument)."""
MAX_ENTRY_SIZE: Final = 65535
"""C2SP tlog-tiles: an entry bundle stores each entry behind a uint16 length."""
MAX_DEPTH_CAP: Final = 128
"""Largest ``Limits.max_depth`` allowed, so that decoding never nears Python's recursion limit."""
NESTING_CAP: Final = 256
"""Nesting bound of :func:`encode_deterministic` and :func:`decode_deterministic` (events plus
what the log wraps around them stay far below it; cyclic values hit it instead of recursing)."""


class CodecError(ValueError):
    """An input was refused by the codec.

    ``problem_type`` is a stable slug (see the module docstring), ``detail`` a human sentence that
    never contains input values, and ``pointer`` a JSON pointer (RFC 6901) to the offending field
    (``""`` is the whole document; ``None`` when the error has no position, e.g. bad syntax).
    """

    def __init__(self, problem_type: str, detail: str, pointer: str | None = None) -> None:
        super().__init__(detail if pointer is None else f'{detail} (at "{pointer}")')
        self.problem_type = problem_type
        self.detail = detail
        self.pointer = pointer


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one submitted event; every field is a positive integer.

    Depth counts containers: the top-level map is depth 1, ``{"a": {"b": [1]}}`` is depth 3.
    Items per container counts array elements and map pairs. Total items counts every data
    item: each container, each map key and each value. String lengths are in bytes (UTF-8 for
    text). A batch is bounded by ``max_batch_bytes`` and ``max_batch_events`` and each of its
    events by the other fields.

    Raises ``ValueError`` for a field that is not a positive ``int``, ``max_depth`` above
    :data:`MAX_DEPTH_CAP`, or ``max_entry_bytes`` above :data:`MAX_ENTRY_SIZE`.
    """

    max_body_bytes: int = 64 * 1024
    max_depth: int = 16
    max_items: int = 1000
    max_string_bytes: int = 8 * 1024
    max_total_items: int = 10_000
    max_entry_bytes: int = MAX_ENTRY_SIZE
    max_batch_bytes: int = 1024 * 1024
    max_batch_events: int = 1000

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{field.name} must be a positive integer")
        if self.max_depth > MAX_DEPTH_CAP:
            raise ValueError(f"Limits.max_depth must be at most {MAX_DEPTH_CAP}")
        if self.max_entry_bytes > MAX_ENTRY_SIZE:
            raise ValueError(f"Limits.max_entry_bytes must be at most {MAX_ENTRY_SIZE}")


DEFAULT_LIMITS: Final = Limits()
"""The limits used when none are given: 64 KiB body, depth 16, 1,000 items per container,
8 KiB strings, 10,000 items in all, 65,535-byte entries, 1 MiB / 1,000-event batches."""


# --- shared helpers -------------------------------------------------------------------------


def _pointer(path: Sequence[str | int]) -> str:
    """Return the RFC 6901 JSON pointer for ``path`` (``~`` -> ``~0``, ``/`` -> ``~1``)."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _head_size(argument: int) -> int:
    """Return the size of the shortest CBOR head carrying ``argument`` (RFC 8949 §3, §4.2.1)."""
    if argument < 24:
        return 1
    if argument < 0x100:
        return 2
    if argument < 0x10000:
        return 3
    if argument < 0x100000000:
        return 5
    return 9


_BYTE: Final = tuple(bytes((i,)) for i in range(256))


def _head(major: int, argument: int) -> bytes:
    """Return the shortest head for ``major`` type and ``argument`` (RFC 8949 §4.2.1, rule 1).

    Requires ``0 <= argument < 2**64``. Example: ``_head(0, 500) == b"\\x19\\x01\\xf4"``.
    """
    initial = major << 5
    if argument < 24:
        return _BYTE[initial | argument]
    if argument < 0x100:
        return bytes((initial | 24, argument))
    if argument < 0x10000:
        return _BYTE[initial | 25] + argument.to_bytes(2, "big")
    if argument < 0x100000000:
        return _BYTE[initial | 26] + argument.to_bytes(4, "big")
    return _BYTE[initial | 27] + argument.to_bytes(8, "big")


def _utf8(text: str) -> bytes:
    """Return ``text`` as UTF-8; raises CodecError(unsupported-type) for lone surrogates."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError(
            "unsupported-type", "text string is not valid Unicode (lone surrogate)"
        ) from None


# --- deterministic encoder ------------------------------------------------------------------


def encode_deterministic(value: Encodable) -> bytes:
    """Return the RFC 8949 §4.2.1 deterministic CBOR encoding of ``value``.

    Shortest-form integers and lengths, definite lengths only, map keys sorted by the bytewise
    lexicographic order of their encodings. Tuples encode like lists and any ``Mapping`` like a
    map. No size limit is applied here (see :func:`encode_entry`).
    Example: ``encode_deterministic({"b": [2, 3], "a": 1}).hex() == "a26161016162820203"``.

    Raises CodecError: ``unsupported-type`` for floats, non-text map keys, integers outside
    ``[INT_MIN, INT_MAX]``, lone surrogates and other Python types; ``float-not-allowed`` for
    floats; ``too-deep`` beyond :data:`NESTING_CAP` levels (also catches cyclic values).
    """
    out = bytearray()
    _encode_into(value, out, 0)
    return bytes(out)


def encode_entry(value: Encodable, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Return :func:`encode_deterministic` of ``value``, refusing it over the entry size limit.

    tlog-tiles entry bundles store each entry behind a uint16 length, so an entry is at most
    65,535 bytes (``limits.max_entry_bytes``). Raises CodecError(entry-too-large) and everything
    :func:`encode_deterministic` raises.
    """
    data = encode_deterministic(value)
    if len(data) > limits.max_entry_bytes:
        raise CodecError(
            "entry-too-large",
            f"the encoded entry is {len(data)} bytes; the limit is {limits.max_entry_bytes}",
        )
    return data


def _encode_into(value: object, out: bytearray, depth: int) -> None:
    """Append the deterministic encoding of ``value`` to ``out`` (see encode_deterministic).

    Exact built-in types take the fast paths; subclasses, tuples, other mappings and every
    refusal go through :func:`_encode_other`.
    """
    kind = type(value)
    if kind is str:
        try:
            data = value.encode("utf-8")  # type: ignore[attr-defined]
        except UnicodeEncodeError:
            raise CodecError(
                "unsupported-type", "text string is not valid Unicode (lone surrogate)"
            ) from None
        length = len(data)
        if length < 24:
            out.append(0x60 | length)
        else:
            out += _head(3, length)
        out += data
    elif kind is int:
        number: int = value  # type: ignore[assignment]
        if 0 <= number < 24:
            out.append(number)
        elif -24 <= number < 0:
            out.append(0x1F - number)  # 0x20 | (-1 - number)
        elif 0 <= number <= INT_MAX:
            out += _head(0, number)
        elif INT_MIN <= number < 0:
            out += _head(1, -1 - number)
        else:
            raise CodecError("unsupported-type", "integer outside [-2**63, 2**64-1]")
    elif kind is dict:
        _encode_map(value, out, depth)  # type: ignore[arg-type]
    elif kind is list:
        _encode_array(value, out, depth)  # type: ignore[arg-type]
    elif value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif kind is bytes:
        payload: bytes = value  # type: ignore[assignment]
        out += _head(2, len(payload))
        out += payload
    else:
        _encode_other(value, out, depth)


def _encode_other(value: object, out: bytearray, depth: int) -> None:
    """Encode subclasses of the allowed types, tuples and mappings; refuse everything else."""
    if isinstance(value, bool):
        out.append(0xF5 if value else 0xF4)
    elif isinstance(value, str):
        _encode_into(str(value), out, depth)
    elif isinstance(value, int):
        _encode_into(int(value), out, depth)
    elif isinstance(value, bytes):
        _encode_into(bytes(value), out, depth)
    elif isinstance(value, Mapping):
        _encode_map(value, out, depth)
    elif isinstance(value, list | tuple):
        _encode_array(value, out, depth)
    elif isinstance(value, float):
        raise CodecError("float-not-allowed", "floats cannot be encoded")
    else:
        raise CodecError(
            "unsupported-type", f"values of type {type(value).__name__} cannot be encoded"
        )


def _encode_map(value: Mapping[object, object], out: bytearray, depth: int) -> None:
    """Encode a map: keys sorted by the bytewise order of their encodings (§4.2.1).

    A ``dict`` whose keys (in their order) were seen recently takes their sorted encodings from
    :data:`_KEY_ORDERS`; events of one kind repeat the same keys.
    """
    if depth >= NESTING_CAP:
        raise CodecError("too-deep", f"nesting deeper than {NESTING_CAP} levels")
    if type(value) is dict:
        names = tuple(value)
        order = _KEY_ORDERS.get(names)
        if order is None:
            order = _key_order(names)
        length = len(order)
        if length < 24:
            out.append(0xA0 | length)
        else:
            out += _head(5, length)
        depth += 1
        for encoded_key, name in order:
            out += encoded_key
            item = value[name]
            kind = type(item)
            if kind is str:
                try:
                    data = item.encode("utf-8")
                except UnicodeEncodeError:
                    raise CodecError(
                        "unsupported-type", "text string is not valid Unicode (lone surrogate)"
                    ) from None
                size = len(data)
                if size < 24:
                    out.append(0x60 | size)
                else:
                    out += _head(3, size)
                out += data
            elif kind is int and 0 <= item < 24:
                out.append(item)
            else:
                _encode_into(item, out, depth)
        return
    pairs: list[tuple[bytes, object]] = []
    for key, item in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise CodecError("unsupported-type", "map keys must be text strings")
            key = str(key)
        pairs.append((_encoded_key(key) if len(key) <= 64 else _encoded_text(key), item))
    # Encodings of distinct strings are distinct, so the sort never compares the items.
    pairs.sort(key=_first)
    length = len(pairs)
    if length < 24:
        out.append(0xA0 | length)
    else:
        out += _head(5, length)
    depth += 1
    for encoded_key, item in pairs:
        out += encoded_key
        _encode_into(item, out, depth)


_KEY_ORDERS: Final[dict[tuple[object, ...], tuple[tuple[bytes, object], ...]]] = {}
"""Recently seen key tuples of dicts -> their (encoded key, key) pairs in encoding order."""
_KEY_ORDERS_LIMIT: Final = 256
_KEY_ORDER_MAX_KEYS: Final = 64


def _key_order(names: tuple[object, ...]) -> tuple[tuple[bytes, object], ...]:
    """Return the (encoded key, key) pairs of a dict's keys in encoding order, caching it.

    Only small key sets of exact ``str`` keys of at most 64 characters are cached (the cache is
    emptied when it holds :data:`_KEY_ORDERS_LIMIT` of them). Raises CodecError
    (unsupported-type) for a key that is not text or is not valid Unicode.
    """
    pairs: list[tuple[bytes, object]] = []
    cacheable = len(names) <= _KEY_ORDER_MAX_KEYS
    for name in names:
        key = name
        if type(key) is not str:
            if not isinstance(key, str):
                raise CodecError("unsupported-type", "map keys must be text strings")
            cacheable = False
            key = str(key)
        if len(key) > 64:
            cacheable = False
            pairs.append((_encoded_text(key), name))
        else:
            pairs.append((_encoded_key(key), name))
    # Encodings of distinct strings are distinct, so the sort never compares the keys.
    pairs.sort(key=_first)
    order = tuple(pairs)
    if cacheable:
        if len(_KEY_ORDERS) >= _KEY_ORDERS_LIMIT:
            _KEY_ORDERS.clear()
        _KEY_ORDERS[names] = order
    return order


def _encode_array(value: Sequence[object], out: bytearray, depth: int) -> None:
    """Encode an array with a definite length."""
    if depth >= NESTING_CAP:
        raise CodecError("too-deep", f"nesting deeper than {NESTING_CAP} levels")
    length = len(value)
    if length < 24:
        out.append(0x80 | length)
    else:
        out += _head(4, length)
    depth += 1
    for item in value:
        _encode_into(item, out, depth)


def _encoded_text(text: str) -> bytes:
    """Return the deterministic encoding of a text string (head and UTF-8 bytes)."""
    data = _utf8(text)
    return _head(3, len(data)) + data


_encoded_key: Final = functools.lru_cache(maxsize=1024)(_encoded_text)
"""Cached :func:`_encoded_text` for short map keys, which repeat from event to event."""


def _first(pair: tuple[bytes, object]) -> bytes:
    """Return the encoded key of a (encoded key, value) pair: the map sort key."""
    return pair[0]


# --- JSON -----------------------------------------------------------------------------------


class _Marker:
    """A value json.loads hands back for something refused later, with its position known."""

    __slots__ = ("key", "kind")

    def __init__(self, kind: str, key: str | None = None) -> None:
        self.kind = kind
        self.key = key


_FLOAT_MARKER: Final = _Marker("float")
_INT_RANGE_MARKER: Final = _Marker("int-range")


def _json_float(_text: str) -> _Marker:
    """parse_float / parse_constant hook: floats, NaN and Infinity become a marker."""
    return _FLOAT_MARKER


def _json_int(text: str) -> int | _Marker:
    """parse_int hook: in-range integers as int, anything else a marker (no huge conversions)."""
    # json's grammar already fixed the form: -?(0|[1-9][0-9]*), ASCII digits only.
    if len(text) > 20:
        return _INT_RANGE_MARKER
    number = int(text)
    if INT_MIN <= number <= INT_MAX:
        return number
    return _INT_RANGE_MARKER


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Marker:
    """object_pairs_hook: a dict, or a marker naming the first repeated key."""
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return _Marker("duplicate", key)
        seen.add(key)
    raise AssertionError("unreachable: a shorter dict implies a repeated key")


_JSON_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_json_object,
    parse_float=_json_float,
    parse_int=_json_int,
    parse_constant=_json_float,
    strict=True,
)

# A JSON string, closing quote optional (so an unterminated string ends the scan instead of
# being retried from every later quote): linear time. Then everything but brackets.
_JSON_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP: Final = {"[": 1, "{": 1, "]": -1, "}": -1}


def _json_too_deep(text: str, max_depth: int) -> bool:
    """Tell whether bracket nesting in ``text`` goes beyond ``max_depth`` (strings skipped).

    The reference scan: exact for any text, valid JSON or not (an unterminated string runs to
    the end, a backslash outside a string is an ordinary character). Strings are cut out and
    the running depth over the remaining brackets is summed in C (``map`` and ``accumulate``).
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > max_depth


def _json_too_deep_fast(text: str, max_depth: int) -> bool:
    """:func:`_json_too_deep` for valid JSON, in a few C-level passes over the text.

    Backslash escapes only matter when they hide a quote, so ``\\\\`` pairs and then ``\\"``
    pairs are deleted (left to right, as a scanner pairs them); the quotes left then alternate
    between opening and closing, so every other piece of ``text.split('"')`` lies outside a
    string. Exact when ``text`` is valid JSON (a backslash appears only inside strings); on
    other text it may differ from :func:`_json_too_deep`, which :func:`_parse_json` then asks.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")
    pieces = text.split('"')
    del pieces[1::2]
    brackets = _NOT_BRACKET.sub("", "".join(pieces))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > max_depth


def _parse_json(body: bytes, max_bytes: int, max_depth: int) -> object:
    """Check size, UTF-8 and depth of ``body``, then parse it with the refusing hooks.

    The depth is checked before json.loads ever sees the text, so that deep input never reaches
    its recursive scanner: by the fast scan, and by the reference scan whenever the text turns
    out deep or not to be JSON (the only cases where the two may disagree).
    """
    if len(body) > max_bytes:
        raise CodecError("too-large", f"the body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CodecError("bad-json", f"invalid UTF-8 at byte {error.start}") from None
    if _json_too_deep_fast(text, max_depth) and _json_too_deep(text, max_depth):
        raise _too_deep(max_depth)
    try:
        return _JSON_DECODER.decode(text)
    except json.JSONDecodeError as error:
        if _json_too_deep(text, max_depth):
            raise _too_deep(max_depth) from None
        raise CodecError(
            "bad-json", f"{error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise _too_deep(max_depth) from None


def _too_deep(max_depth: int) -> CodecError:
    """Return the refusal of JSON nested deeper than ``max_depth`` (made only when needed)."""
    return CodecError("too-deep", f"nesting deeper than {max_depth} levels")


class _RefusalError(Exception):
    """Internal: a refusal travelling up the decoders, collecting its path on the way.

    Containers append their segment as it passes (innermost first), so that no path has to be
    maintained while nothing is wrong. ``positional`` is false for syntax errors, which have no
    pointer unless they happen inside some field.
    """

    def __init__(self, problem_type: str, detail: str, *, positional: bool = True) -> None:
        super().__init__(detail)
        self.problem_type = problem_type
        self.detail = detail
        self.positional = positional
        self.path: list[str | int] = []

    def to_error(self) -> CodecError:
        """Return the public CodecError with its JSON pointer."""
        if self.path:
            pointer: str | None = _pointer(self.path[::-1])
        else:
            pointer = "" if self.positional else None
        return CodecError(self.problem_type, self.detail, pointer)


class _JSONChecker:
    """Walks a value parsed by json.loads, enforcing Limits and summing its encoded size."""

    __slots__ = ("items", "max_depth", "max_items", "max_string", "max_total")

    def __init__(self, limits: Limits) -> None:
        self.max_depth = limits.max_depth
        self.max_items = limits.max_items
        self.max_string = limits.max_string_bytes
        self.max_total = limits.max_total_items
        self.items = 0

    def too_many(self) -> _RefusalError:
        """Return the refusal for exceeding ``max_total_items``."""
        return _RefusalError("too-large", f"more than {self.max_total} data items in all")

    def text_size(self, text: str) -> int:
        """Return the encoded size of a text string after checking its length."""
        if text.isascii():
            length = len(text)
        else:
            try:
                length = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise _RefusalError(
                    "bad-json", "text string is not valid Unicode (lone surrogate escape)"
                ) from None
        if length > self.max_string:
            raise _RefusalError("too-large", f"string longer than {self.max_string} bytes")
        return length + 1 if length < 24 else length + _head_size(length)

    def check(self, value: object, depth: int) -> int:
        """Check ``value`` found at nesting ``depth`` and return its deterministic size."""
        self.items += 1
        if self.items > self.max_total:
            raise self.too_many()
        kind = type(value)
        if kind is str:
            return self.text_size(value)  # type: ignore[arg-type]
        if kind is int:
            number: int = value  # type: ignore[assignment]
            if -24 <= number < 24:
                return 1
            return _head_size(number if number >= 0 else -1 - number)
        if value is None or kind is bool:
            return 1
        if kind is dict or kind is list:
            return self.container(value, depth + 1)  # type: ignore[arg-type]
        if value is _FLOAT_MARKER:
            raise _RefusalError("float-not-allowed", "floats, NaN and Infinity are not allowed")
        if value is _INT_RANGE_MARKER:
            raise _RefusalError("unsupported-type", "integer outside [-2**63, 2**64-1]")
        if isinstance(value, _Marker) and value.key is not None:
            refusal = _RefusalError("duplicate-key", "duplicate map key")
            refusal.path.append(value.key)
            raise refusal
        raise AssertionError(f"json produced an unexpected {kind.__name__}")

    def container(self, container: dict[str, object] | list[object], depth: int) -> int:
        """Check an object or array at nesting ``depth`` and return its deterministic size."""
        if depth > self.max_depth:
            raise _RefusalError("too-deep", f"nesting deeper than {self.max_depth} levels")
        length = len(container)
        if length > self.max_items:
            raise _RefusalError("too-large", f"more than {self.max_items} items in one container")
        size = 1 if length < 24 else _head_size(length)
        check = self.check
        max_total = self.max_total
        max_string = self.max_string
        if isinstance(container, dict):
            for key, item in container.items():
                self.items += 1
                if self.items > max_total:
                    raise self.too_many()
                key_length = len(key)
                if key_length < 24 and key_length <= max_string and key.isascii():
                    size += key_length + 1  # what text_size() returns for it
                else:
                    size += self.text_size(key)
                # ASCII text and integers inline (what check() does for them, in order).
                if type(item) is str and item.isascii() and len(item) <= max_string:
                    self.items += 1
                    if self.items > max_total:
                        refusal = self.too_many()
                        refusal.path.append(key)
                        raise refusal
                    text_length = len(item)
                    size += text_length + (1 if text_length < 24 else _head_size(text_length))
                    continue
                try:
                    size += check(item, depth)
                except _RefusalError as refusal:
                    refusal.path.append(key)
                    raise
        else:
            for index, item in enumerate(container):
                try:
                    size += check(item, depth)
                except _RefusalError as refusal:
                    refusal.path.append(index)
                    raise
        return size


def _check_event(value: object, limits: Limits, check: Callable[[], int]) -> dict[str, Value]:
    """Require a top-level map, run ``check`` (returns the encoded size) and bound that size.

    A JSON object with a repeated key arrives as a duplicate marker: ``check`` refuses it.
    """
    is_duplicate = isinstance(value, _Marker) and value.key is not None
    if not isinstance(value, dict) and not is_duplicate:
        raise CodecError("bad-event", "an event must be a map with text keys", "")
    size = check()
    if size > limits.max_entry_bytes:
        raise CodecError(
            "entry-too-large",
            f"the encoded event is {size} bytes; the limit is {limits.max_entry_bytes}",
            "",
        )
    return cast("dict[str, Value]", value)


def _check_json_event(value: object, limits: Limits) -> dict[str, Value]:
    """Validate one parsed JSON event against ``limits`` (see decode_json)."""

    def size() -> int:
        try:
            return _JSONChecker(limits).check(value, 0)
        except _RefusalError as refusal:
            raise refusal.to_error() from None

    return _check_event(value, limits, size)


def decode_json(body: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Value]:
    """Decode one event from a JSON body (RFC 8259, UTF-8) and check it against ``limits``.

    Requires a JSON object at the top. Integers must lie in ``[-2**63, 2**64-1]``; numbers with a
    fraction or exponent (``1.0``, ``1e3``), NaN and Infinity are refused as floats; duplicate
    member names are refused. The deterministic encoding must fit ``limits.max_entry_bytes``.
    Example: ``decode_json(b'{"jti": "a1", "iat": 1700000000}')``.

    Raises CodecError: bad-json, bad-event, float-not-allowed, unsupported-type, duplicate-key,
    too-deep, too-large, entry-too-large.
    """
    value = _parse_json(body, limits.max_body_bytes, limits.max_depth)
    return _check_json_event(value, limits)


def decode_json_batch(
    body: bytes, limits: Limits = DEFAULT_LIMITS
) -> list[dict[str, Value] | CodecError]:
    """Decode a JSON array of events, checking each one like :func:`decode_json`.

    The whole body must be valid JSON, at most ``limits.max_batch_bytes`` long, an array of at
    most ``limits.max_batch_events`` elements; a failure there raises CodecError (bad-json,
    bad-event, too-large, too-deep). Each element is then checked on its own: the result holds,
    in request order, the event or the CodecError refusing it (pointers are relative to the
    element). Example: ``decode_json_batch(b'[{"a": 1}, {"b": 1.5}]')`` -> ``[{"a": 1},
    CodecError(float-not-allowed)]``.
    """
    value = _parse_json(body, limits.max_batch_bytes, limits.max_depth + 1)
    elements = _batch_elements(value, limits)
    results: list[dict[str, Value] | CodecError] = []
    for element in elements:
        try:
            results.append(_check_json_event(element, limits))
        except CodecError as error:
            results.append(error)
    return results


def _batch_elements(value: object, limits: Limits) -> list[object]:
    """Return the elements of a parsed batch after checking it is a bounded array."""
    if not isinstance(value, list):
        raise CodecError("bad-event", "a batch must be an array of events", "")
    if len(value) > limits.max_batch_events:
        raise CodecError("too-large", f"more than {limits.max_batch_events} events in one batch")
    return value


# --- CBOR -----------------------------------------------------------------------------------

_INT64_NEGATIVE_MAX: Final = 2**63 - 1
"""Largest major type 1 argument allowed: -1 - (2**63 - 1) == -2**63."""
_SHORTEST_FROM: Final = (0,) * 24 + (24, 0x100, 0x10000, 0x100000000)
"""By additional information 24..27: the smallest argument that needs that head width."""


class _CBORReader:
    """A strict, bounded reader of one CBOR data item (RFC 8949 §3).

    ``deterministic`` additionally refuses non-shortest heads and map keys that are not in
    strictly increasing bytewise order of their encodings (§4.2.1). Limits are checked before
    any allocation: a declared length is compared with the bytes left and with the limits.
    ``size`` accumulates the deterministic encoded size of what was read. Refusals are raised
    as :class:`_RefusalError`.
    """

    __slots__ = (
        "data",
        "deterministic",
        "end",
        "items",
        "max_depth",
        "max_items",
        "max_string",
        "max_total",
        "pos",
        "size",
    )

    def __init__(
        self,
        data: bytes,
        *,
        max_depth: int,
        max_items: int,
        max_string: int,
        max_total: int,
        deterministic: bool,
    ) -> None:
        self.data = data
        self.end = len(data)
        self.pos = 0
        self.max_depth = max_depth
        self.max_items = max_items
        self.max_string = max_string
        self.max_total = max_total
        self.deterministic = deterministic
        self.items = 0
        self.size = 0

    def malformed(self, detail: str, at: int | None = None) -> _RefusalError:
        """Return a bad-cbor refusal naming the byte offset (default: the current one)."""
        return _RefusalError(
            "bad-cbor", f"{detail} at byte {self.pos if at is None else at}", positional=False
        )

    def head(self) -> tuple[int, int]:
        """Read a head; return (initial byte, argument).

        For major type 7 the argument is the additional information and nothing beyond the
        initial byte is read: :meth:`simple` dispatches those values.
        """
        pos = self.pos
        if pos >= self.end:
            raise self.malformed("unexpected end of data")
        initial = self.data[pos]
        info = initial & 0x1F
        if info < 24 or initial >= 0xE0:
            self.pos = pos + 1
            return initial, info
        if info > 27:
            if info == 31 and 0x40 <= initial < 0xC0:
                raise self.malformed("indefinite-length items are not accepted")
            raise self.malformed("reserved or invalid additional information")
        end = pos + 1 + (1 << (info - 24))
        if end > self.end:
            raise self.malformed("unexpected end of data")
        argument = int.from_bytes(self.data[pos + 1 : end], "big")
        if self.deterministic and argument < _SHORTEST_FROM[info]:
            raise _RefusalError("not-deterministic", f"non-shortest head at byte {pos}")
        self.pos = end
        return initial, argument

    def payload(self, length: int) -> bytes:
        """Return the next ``length`` bytes after checking what is left and the string limit."""
        start = self.pos
        end = start + length
        if end > self.end:
            raise self.malformed("string runs past the end of data")
        if length > self.max_string:
            raise _RefusalError("too-large", f"string longer than {self.max_string} bytes")
        self.pos = end
        self.size += length + (1 if length < 24 else _head_size(length))
        return self.data[start:end]

    def text(self, length: int) -> str:
        """Return the next text string payload decoded as strict UTF-8."""
        start = self.pos
        end = start + length
        if end > self.end:
            raise self.malformed("string runs past the end of data")
        if length > self.max_string:
            raise _RefusalError("too-large", f"string longer than {self.max_string} bytes")
        self.pos = end
        self.size += length + (1 if length < 24 else _head_size(length))
        try:
            return self.data[start:end].decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.malformed("invalid UTF-8 in text string", start + error.start) from None

    def item(self, depth: int) -> Value:
        """Read one data item found at nesting ``depth``."""
        self.items += 1
        if self.items > self.max_total:
            raise _RefusalError("too-large", f"more than {self.max_total} data items in all")
        pos = self.pos
        if pos >= self.end:
            raise self.malformed("unexpected end of data")
        initial = self.data[pos]
        argument = initial & 0x1F
        if argument < 24 or initial >= 0xE0:
            self.pos = pos + 1  # the common one-byte head, read inline
        else:
            initial, argument = self.head()
        major = initial >> 5
        if major == 3:
            return self.text(argument)
        if major == 0:
            self.size += 1 if argument < 24 else _head_size(argument)
            return argument
        if major == 5:
            return self.map(argument, depth + 1)
        if major == 4:
            return self.array(argument, depth + 1)
        if major == 1:
            if argument > _INT64_NEGATIVE_MAX:
                raise _RefusalError("unsupported-type", "integer outside [-2**63, 2**64-1]")
            self.size += 1 if argument < 24 else _head_size(argument)
            return -1 - argument
        if major == 2:
            return self.payload(argument)
        if major == 6:
            raise _RefusalError("unsupported-type", "CBOR tags are not allowed")
        return self.simple(argument)

    def simple(self, info: int) -> Value:
        """Return false, true or null for major type 7; refuse every other simple value."""
        if 20 <= info <= 22:
            self.size += 1
            return (False, True, None)[info - 20]
        at = self.pos - 1
        if info == 23:
            raise _RefusalError("unsupported-type", "undefined is not allowed")
        if info <= 24:
            raise _RefusalError("unsupported-type", "simple values are not allowed")
        if info <= 27:
            raise _RefusalError("float-not-allowed", "floats are not allowed")
        if info == 31:
            raise self.malformed("break outside an indefinite-length item", at)
        raise self.malformed("reserved additional information", at)

    def container(self, length: int, slots: int, depth: int) -> None:
        """Check a declared array/map length (``slots`` items per entry) before reading it."""
        if depth > self.max_depth:
            raise _RefusalError("too-deep", f"nesting deeper than {self.max_depth} levels")
        if length * slots > self.end - self.pos:
            raise self.malformed("container runs past the end of data")
        if length > self.max_items:
            raise _RefusalError("too-large", f"more than {self.max_items} items in one container")
        self.size += 1 if length < 24 else _head_size(length)

    def array(self, length: int, depth: int) -> list[Value]:
        """Read ``length`` array elements at nesting ``depth``."""
        self.container(length, 1, depth)
        result: list[Value] = []
        item = self.item
        for index in range(length):
            try:
                result.append(item(depth))
            except _RefusalError as refusal:
                refusal.path.append(index)
                raise
        return result

    def key(self) -> str:
        """Read a map key, which must be a text string."""
        self.items += 1
        if self.items > self.max_total:
            raise _RefusalError("too-large", f"more than {self.max_total} data items in all")
        pos = self.pos
        if pos >= self.end:
            raise self.malformed("unexpected end of data")
        initial = self.data[pos]
        if initial >> 5 != 3:
            raise _RefusalError("unsupported-type", "map keys must be text strings")
        if initial < 0x78:
            self.pos = pos + 1  # one-byte head: keys shorter than 24 bytes
            return self.text(initial & 0x1F)
        _, length = self.head()
        return self.text(length)

    def map(self, length: int, depth: int) -> dict[str, Value]:
        """Read ``length`` map pairs at nesting ``depth``; keys must be unique text strings."""
        self.container(length, 2, depth)
        result: dict[str, Value] = {}
        data = self.data
        previous_key = b""
        item = self.item
        for _ in range(length):
            key_start = self.pos
            key = self.key()
            if key in result:
                refusal = _RefusalError("duplicate-key", "duplicate map key")
                refusal.path.append(key)
                raise refusal
            if self.deterministic:
                encoded_key = data[key_start : self.pos]
                if encoded_key <= previous_key:
                    refusal = _RefusalError("not-deterministic", "map keys out of bytewise order")
                    refusal.path.append(key)
                    raise refusal
                previous_key = encoded_key
            try:
                result[key] = item(depth)
            except _RefusalError as refusal:
                refusal.path.append(key)
                raise
        return result

    def read(self) -> Value:
        """Read the one top-level item and refuse anything after it."""
        try:
            value = self.item(0)
            if self.pos != self.end:
                raise self.malformed("trailing bytes after the data item")
        except _RefusalError as refusal:
            raise refusal.to_error() from None
        return value


def _event_reader(data: bytes, limits: Limits) -> _CBORReader:
    """Return a reader that applies the per-event ``limits``."""
    return _CBORReader(
        data,
        max_depth=limits.max_depth,
        max_items=limits.max_items,
        max_string=limits.max_string_bytes,
        max_total=limits.max_total_items,
        deterministic=False,
    )


def _decode_cbor_event(data: bytes, limits: Limits) -> dict[str, Value]:
    """Decode and check one CBOR event whose size was already checked (see decode_cbor)."""
    if not data:
        raise CodecError("bad-cbor", "empty body")
    if data[0] >> 5 != 5:
        # Refuse before reading: the top level must be a map, whatever follows.
        raise CodecError("bad-event", "an event must be a map with text keys", "")
    reader = _event_reader(data, limits)
    value = reader.read()
    return _check_event(value, limits, lambda: reader.size)


def decode_cbor(body: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Value]:
    """Decode one event from a CBOR body (RFC 8949) and check it against ``limits``.

    Requires exactly one well-formed, definite-length data item: a map with text keys. The input
    need not be deterministic (non-shortest heads and unsorted keys are accepted; the caller
    re-encodes), but duplicate keys, tags, floats, ``undefined`` and other simple values are
    refused. Example: ``decode_cbor(bytes.fromhex("a161610a")) == {"a": 10}``.

    Raises CodecError: bad-cbor (malformed, truncated, trailing bytes, invalid UTF-8, indefinite
    lengths), bad-event, float-not-allowed, unsupported-type, duplicate-key, too-deep, too-large,
    entry-too-large.
    """
    if len(body) > limits.max_body_bytes:
        raise CodecError(
            "too-large", f"the body is {len(body)} bytes; the limit is {limits.max_body_bytes}"
        )
    return _decode_cbor_event(bytes(body), limits)


def _skip_item(data: bytes, pos: int) -> int:
    """Return the offset just past the well-formed definite-length data item at ``pos``.

    Iterative (no recursion, no allocation): each item read consumes at least one byte, so a
    huge declared count runs out of data instead of memory. Raises CodecError(bad-cbor) for
    malformed, truncated or indefinite-length input.
    """
    pending = 1
    end = len(data)
    while pending:
        pending -= 1
        if pos >= end:
            raise CodecError("bad-cbor", f"unexpected end of data at byte {pos}")
        initial = data[pos]
        major = initial >> 5
        info = initial & 0x1F
        pos += 1
        if info < 24:
            argument = info
        elif info <= 27:
            width = 1 << (info - 24)
            if pos + width > end:
                raise CodecError("bad-cbor", f"unexpected end of data at byte {pos}")
            argument = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        elif info == 31 and major in (2, 3, 4, 5):
            raise CodecError("bad-cbor", f"indefinite-length item at byte {pos - 1}")
        else:
            raise CodecError("bad-cbor", f"reserved additional information at byte {pos - 1}")
        if major in (2, 3):
            pos += argument
            if pos > end:
                raise CodecError("bad-cbor", "string runs past the end of data")
        elif major == 4:
            pending += argument
        elif major == 5:
            pending += 2 * argument
        elif major == 6:
            pending += 1
        elif major == 7 and info == 24 and argument < 32:
            raise CodecError("bad-cbor", f"invalid simple value encoding at byte {pos - 2}")
    return pos


def decode_cbor_batch(
    body: bytes, limits: Limits = DEFAULT_LIMITS
) -> list[dict[str, Value] | CodecError]:
    """Decode a CBOR array of events, checking each one like :func:`decode_cbor`.

    The whole body must be one well-formed definite-length CBOR array of at most
    ``limits.max_batch_events`` elements in at most ``limits.max_batch_bytes``; a failure there
    raises CodecError (bad-cbor, bad-event, too-large). Each element is then decoded on its own
    (each within ``limits.max_body_bytes``): the result holds, in request order, the event or
    the CodecError refusing it.
    """
    if len(body) > limits.max_batch_bytes:
        raise CodecError(
            "too-large", f"the body is {len(body)} bytes; the limit is {limits.max_batch_bytes}"
        )
    data = bytes(body)
    if not data:
        raise CodecError("bad-cbor", "empty body")
    if data[0] >> 5 != 4:
        raise CodecError("bad-event", "a batch must be an array of events", "")
    reader = _event_reader(data, limits)
    try:
        _, count = reader.head()
    except _RefusalError as refusal:
        raise refusal.to_error() from None
    if count > limits.max_batch_events:
        raise CodecError("too-large", f"more than {limits.max_batch_events} events in one batch")
    bounds: list[tuple[int, int]] = []
    pos = reader.pos
    for _ in range(count):
        end = _skip_item(data, pos)
        bounds.append((pos, end))
        pos = end
    if pos != len(data):
        raise CodecError("bad-cbor", f"trailing bytes after the data item at byte {pos}")
    results: list[dict[str, Value] | CodecError] = []
    for start, end in bounds:
        try:
            if end - start > limits.max_body_bytes:
                raise CodecError(
                    "too-large",
                    f"the event is {end - start} bytes; the limit is {limits.max_body_bytes}",
                )
            results.append(_decode_cbor_event(data[start:end], limits))
        except CodecError as error:
            results.append(error)
    return results


def decode_deterministic(data: bytes) -> Value:
    """Decode bytes written by :func:`encode_deterministic`, refusing any other encoding.

    Used to read stored leaves back. Accepts exactly the RFC 8949 §4.2.1 encodings of
    :data:`Value` items: shortest heads, definite lengths, text map keys in strictly increasing
    bytewise order of their encodings, nesting within :data:`NESTING_CAP`; any top-level type.
    Example: ``decode_deterministic(bytes.fromhex("a26161016162820203")) == {"a": 1, "b": [2, 3]}``.

    Raises CodecError: not-deterministic, duplicate-key, bad-cbor, float-not-allowed,
    unsupported-type, too-deep.
    """
    data = bytes(data)
    reader = _CBORReader(
        data,
        max_depth=NESTING_CAP,
        max_items=len(data) + 1,
        max_string=len(data) + 1,
        max_total=len(data) + 1,
        deterministic=True,
    )
    return reader.read()


# --- output ---------------------------------------------------------------------------------


def to_json_compatible(value: Encodable) -> JSONValue:
    """Return ``value`` with byte strings as standard padded base64 text, for JSON output.

    Used for the ``event`` member of ``GET /v1/entries/<index>``. Tuples become lists. The
    conversion loses the text/bytes distinction: read ``entry`` (the exact leaf bytes) when it
    matters. Example: ``to_json_compatible({"sig": b"\\x01\\x02"}) == {"sig": "AQI="}``.

    Raises CodecError(unsupported-type) for floats, non-text map keys and other Python types,
    CodecError(too-deep) beyond :data:`NESTING_CAP` levels.
    """
    return _to_json(value, 0)


def _to_json(value: object, depth: int) -> JSONValue:
    """Convert one value for :func:`to_json_compatible`."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if depth >= NESTING_CAP:
        raise CodecError("too-deep", f"nesting deeper than {NESTING_CAP} levels")
    if isinstance(value, Mapping):
        result: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError("unsupported-type", "map keys must be text strings")
            result[key] = _to_json(item, depth + 1)
        return result
    if isinstance(value, list | tuple):
        return [_to_json(item, depth + 1) for item in value]
    raise CodecError("unsupported-type", f"values of type {type(value).__name__} have no JSON form")
