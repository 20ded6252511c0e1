"""RFC 8949 §4.2.1 deterministic CBOR for the client side: encode events, read log entries back.

The emitter signs ``b"etch/event/v1\\x00" + encode_deterministic(event)`` and checks the leaf the
log returns, so it needs the log's canonical encoding without importing the server. This module
is that encoding for the values an event may hold (the data model of ``server.codec``): text
strings, byte strings, integers in ``[-2**63, 2**64 - 1]``, booleans, null, arrays and maps with
text keys. Never floats, tags, undefined or indefinite lengths. A test checks it byte for byte
against ``server.codec.encode_deterministic`` on generated values.

Deterministic means (RFC 8949 §4.2.1): every integer, length and count in its shortest head,
definite lengths only, and map keys sorted by the bytewise order of their encodings (for text
keys: shorter first, then bytewise). Example::

    >>> encode_deterministic({"b": [2, 3], "a": 1}).hex()
    'a26161016162820203'

:func:`decode_deterministic` is the strict reader: it accepts exactly the byte strings
:func:`encode_deterministic` can produce and refuses everything else.

Errors: :class:`CBORError` (a ``ValueError``) for any value that cannot be encoded or any input
that is not a deterministic encoding; the message names the rule broken, never an input value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_NESTING",
    "CBORError",
    "CBORValue",
    "decode_deterministic",
    "encode_deterministic",
]

CBORValue: TypeAlias = (
    "str | bytes | int | bool | Sequence[CBORValue] | Mapping[str, CBORValue] | None"
)
"""A value with a deterministic CBOR form here (tuples encode as arrays, any mapping as a map)."""

INT_MIN: Final = -(2**63)
"""Smallest integer accepted (the log's event data model)."""
INT_MAX: Final = 2**64 - 1
"""Largest integer accepted (the largest CBOR major type 0 argument)."""
MAX_NESTING: Final = 256
"""Deepest nesting of arrays and maps accepted by both directions (stops cyclic values too)."""

_MAJOR_UINT: Final = 0
_MAJOR_NINT: Final = 1
_MAJOR_BYTES: Final = 2
_MAJOR_TEXT: Final = 3
_MAJOR_ARRAY: Final = 4
_MAJOR_MAP: Final = 5
_MAJOR_SIMPLE: Final = 7
_FALSE: Final = 0xF4
_TRUE: Final = 0xF5
_NULL: Final = 0xF6


class CBORError(ValueError):
    """A value cannot be encoded, or bytes are not a deterministic encoding of an allowed value."""


def _head(major: int, argument: int) -> bytes:
    """Return the shortest CBOR head for ``major`` and ``argument`` (RFC 8949 §3.1, §4.2.1).

    Requires ``0 <= argument <= INT_MAX``. Example: ``_head(0, 500) == bytes.fromhex("1901f4")``.
    """
    top = major << 5
    if argument < 24:
        return bytes((top | argument,))
    if argument <= 0xFF:
        return bytes((top | 24, argument))
    if argument <= 0xFFFF:
        return bytes((top | 25,)) + argument.to_bytes(2, "big")
    if argument <= 0xFFFFFFFF:
        return bytes((top | 26,)) + argument.to_bytes(4, "big")
    return bytes((top | 27,)) + argument.to_bytes(8, "big")


def _text(value: str) -> bytes:
    """Return the encoded text string ``value``; raises CBORError for lone surrogates."""
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise CBORError("a text string is not valid Unicode (lone surrogate)") from None
    return _head(_MAJOR_TEXT, len(data)) + data


def encode_deterministic(value: CBORValue) -> bytes:
    """Return the RFC 8949 §4.2.1 deterministic CBOR encoding of ``value``.

    Example: ``encode_deterministic({"b": [2, 3], "a": 1}).hex() == "a26161016162820203"``.

    Raises CBORError for floats, integers outside ``[INT_MIN, INT_MAX]``, non-text map keys,
    lone surrogates, other Python types, and nesting deeper than :data:`MAX_NESTING`.
    """
    parts: list[bytes] = []
    _encode(value, parts, 0)
    return b"".join(parts)


def _encode(value: object, parts: list[bytes], depth: int) -> None:
    """Append the encoding of ``value`` at nesting ``depth`` to ``parts``."""
    if isinstance(value, str):
        parts.append(_text(value))
    elif value is True:
        parts.append(bytes((_TRUE,)))
    elif value is False:
        parts.append(bytes((_FALSE,)))
    elif value is None:
        parts.append(bytes((_NULL,)))
    elif isinstance(value, int):
        if 0 <= value <= INT_MAX:
            parts.append(_head(_MAJOR_UINT, value))
        elif INT_MIN <= value < 0:
            parts.append(_head(_MAJOR_NINT, -1 - value))
        else:
            raise CBORError("an integer is outside [-2**63, 2**64 - 1]")
    elif isinstance(value, bytes):
        parts.append(_head(_MAJOR_BYTES, len(value)))
        parts.append(value)
    elif isinstance(value, Mapping):
        if depth >= MAX_NESTING:
            raise CBORError(f"nesting deeper than {MAX_NESTING} levels")
        pairs: list[tuple[bytes, object]] = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise CBORError("map keys must be text strings")
            pairs.append((_text(key), item))
        pairs.sort(key=_pair_key)
        parts.append(_head(_MAJOR_MAP, len(pairs)))
        for encoded_key, item in pairs:
            parts.append(encoded_key)
            _encode(item, parts, depth + 1)
    elif isinstance(value, list | tuple):
        if depth >= MAX_NESTING:
            raise CBORError(f"nesting deeper than {MAX_NESTING} levels")
        parts.append(_head(_MAJOR_ARRAY, len(value)))
        for item in value:
            _encode(item, parts, depth + 1)
    elif isinstance(value, float):
        raise CBORError("floats have no place in an event")
    else:
        raise CBORError(f"values of type {type(value).__name__} cannot be encoded")


def _pair_key(pair: tuple[bytes, object]) -> bytes:
    """Sort key of an (encoded key, value) pair: the encoded key (RFC 8949 §4.2.1)."""
    return pair[0]


class _Reader:
    """A strict cursor over deterministic CBOR bytes (see :func:`decode_deterministic`)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int) -> bytes:
        """Return the next ``count`` bytes; raises CBORError if the data ends first."""
        end = self.pos + count
        if end > len(self.data):
            raise CBORError(f"data ends early (needed {count} bytes at offset {self.pos})")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def head(self) -> tuple[int, int, int]:
        """Read one head: return (major type, additional information, argument).

        Refuses non-shortest arguments, reserved values and indefinite lengths.
        """
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info > 27:
            raise CBORError(f"indefinite length or reserved value at offset {self.pos - 1}")
        width = 1 << (info - 24)
        argument = int.from_bytes(self.take(width), "big")
        if major != _MAJOR_SIMPLE and argument < (24 if width == 1 else 1 << (4 * width)):
            raise CBORError(f"a head is not in its shortest form at offset {self.pos - 1 - width}")
        return major, info, argument

    def item(self, depth: int) -> object:
        """Read one data item at nesting ``depth`` and return its value."""
        start = self.pos
        major, info, argument = self.head()
        if major == _MAJOR_UINT:
            return argument
        if major == _MAJOR_NINT:
            if argument > -1 - INT_MIN:
                raise CBORError("a negative integer is below -2**63")
            return -1 - argument
        if major == _MAJOR_BYTES:
            return self.take(argument)
        if major == _MAJOR_TEXT:
            return self.text(argument)
        if major in (_MAJOR_ARRAY, _MAJOR_MAP):
            if depth >= MAX_NESTING:
                raise CBORError(f"nesting deeper than {MAX_NESTING} levels")
            if argument > len(self.data) - self.pos:
                raise CBORError(f"a container at offset {start} is longer than the data")
            if major == _MAJOR_ARRAY:
                return [self.item(depth + 1) for _ in range(argument)]
            return self.map(argument, depth + 1)
        if major == _MAJOR_SIMPLE and info < 24:
            if argument == _FALSE & 0x1F:
                return False
            if argument == _TRUE & 0x1F:
                return True
            if argument == _NULL & 0x1F:
                return None
        raise CBORError(f"a tag, float or simple value at offset {start} is not allowed")

    def text(self, length: int) -> str:
        """Read a UTF-8 text string of ``length`` bytes."""
        raw = self.take(length)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CBORError(f"invalid UTF-8 in a text string before offset {self.pos}") from None

    def map(self, count: int, depth: int) -> dict[str, object]:
        """Read ``count`` pairs with text keys in strictly increasing encoded order."""
        result: dict[str, object] = {}
        previous = b""
        for _ in range(count):
            key_start = self.pos
            major, _, length = self.head()
            if major != _MAJOR_TEXT:
                raise CBORError(f"a map key at offset {key_start} is not a text string")
            key = self.text(length)
            encoded = self.data[key_start : self.pos]
            if encoded <= previous:
                raise CBORError(f"map keys are repeated or out of order at offset {key_start}")
            previous = encoded
            result[key] = self.item(depth)
        return result


def decode_deterministic(data: bytes) -> object:
    """Decode one deterministic CBOR data item, refusing any other encoding.

    Accepts exactly the outputs of :func:`encode_deterministic` (arrays decode as lists, maps as
    dicts). Example: ``decode_deterministic(bytes.fromhex("a161610a")) == {"a": 10}``.

    Raises CBORError for truncated data, trailing bytes, non-shortest heads, indefinite lengths,
    unsorted or repeated map keys, non-text keys, invalid UTF-8, floats, tags, simple values
    other than false/true/null, and nesting deeper than :data:`MAX_NESTING`.
    """
    reader = _Reader(bytes(data))
    value = reader.item(0)
    if reader.pos != len(reader.data):
        raise CBORError(f"trailing bytes after the data item at offset {reader.pos}")
    return value
