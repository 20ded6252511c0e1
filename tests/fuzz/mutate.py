"""A hypothesis strategy that mutates seed inputs, the way a coverage-guided fuzzer does.

Random bytes rarely get past the first line of a signed note; a valid input with a few edits
reaches the checks behind it. :func:`mutated` draws one seed and applies 1 to 8 edits: flip,
set or insert a byte (often a delimiter of these formats), delete or duplicate a range, or
splice in part of another seed. Hypothesis shrinks a failure to a small set of edits.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

__all__ = ["INTERESTING", "mutated"]

INTERESTING: tuple[bytes, ...] = (
    b"\n", b"\n\n", b" ", b"\t", b"\x00", b"\x7f", b"\xff", b"\xe2\x80\x94", b"0", b"9",
    b"-", b"+", b"=", b"/", b".", b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\u0000",
    b"\\ud800", b"1e3", b"\x80", b"\x9f", b"\xbf", b"\xf5", b"\xfb", b"\x1b", b"\xa1",
)
"""Delimiters and edge bytes of the formats under test (notes, JSON, CBOR heads, base64)."""


@st.composite
def _edit(draw: st.DrawFn, data: bytes, seeds: Sequence[bytes]) -> bytes:
    """Apply one random edit to ``data``."""
    size = len(data)
    at = draw(st.integers(0, size))
    end = draw(st.integers(at, min(size, at + 64)))
    kind = draw(st.integers(0, 6))
    if kind == 0 and at < size:  # flip one bit
        bit = draw(st.integers(0, 7))
        return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]
    if kind == 1:  # set a range to an interesting token
        return data[:at] + draw(st.sampled_from(INTERESTING)) + data[end:]
    if kind == 2:  # insert an interesting token
        return data[:at] + draw(st.sampled_from(INTERESTING)) + data[at:]
    if kind == 3:  # delete a range
        return data[:at] + data[end:]
    if kind == 4:  # duplicate a range
        return data[:end] + data[at:end] + data[end:]
    if kind == 5:  # insert random bytes
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    other = draw(st.sampled_from(seeds))  # splice in part of another seed
    start = draw(st.integers(0, len(other)))
    return data[:at] + other[start : start + draw(st.integers(0, 128))] + data[end:]


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    """Draw one of ``seeds`` (non-empty) and apply 1 to 8 edits to it."""
    data = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 8))):
        data = draw(_edit(data, seeds))
    return data
