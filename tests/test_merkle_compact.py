"""merkle.compact: the append frontier agrees with the naive RFC 6962 reference after any mix of
appends and bulk extends, round-trips through bytes, and rejects malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import merkle.compact
from merkle.compact import CompactRange
from merkle.errors import MalformedError
from merkle.hashing import EMPTY_ROOT, leaf_hash
from merkle.tree import MAX_TREE_SIZE, root_nodes
from tests import naive
from tests.test_merkle_tree import ENTRIES, ROOTS

LEAVES = [naive.leaf(i.to_bytes(4, "big")) for i in range(3000)]
ENTRY_DATA = [i.to_bytes(4, "big") for i in range(3000)]


def _frontier(size: int) -> list[bytes]:
    """The hashes of root_nodes(size) by the naive reference."""
    return [naive.node(n.level, n.index, ENTRY_DATA) for n in root_nodes(size)]


@pytest.mark.parametrize("size", range(9))
def test_known_roots(size: int) -> None:
    r = CompactRange()
    r.extend(leaf_hash(e) for e in ENTRIES[:size])
    assert r.root().hex() == ROOTS[size]
    one_by_one = CompactRange()
    for e in ENTRIES[:size]:
        one_by_one.append(leaf_hash(e))
    assert one_by_one == r


def test_empty() -> None:
    r = CompactRange()
    assert r.size == 0
    assert r.hashes == ()
    assert r.root() == EMPTY_ROOT
    assert r.to_bytes() == bytes(8)
    r.extend([])
    assert r.size == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 300)),
        max_size=12,
    )
)
def test_appends_and_extends_match_naive(steps: list[tuple[bool, int]]) -> None:
    r = CompactRange()
    size = 0
    for one_by_one, count in steps:
        count = min(count, len(LEAVES) - size)
        batch = LEAVES[size : size + count]
        if one_by_one:
            for h in batch:
                r.append(h)
        else:
            r.extend(iter(batch))
        size += count
        assert r.size == size
        assert list(r.hashes) == _frontier(size)
        assert CompactRange.from_bytes(r.to_bytes()) == r
    assert r.root() == naive.mth(ENTRY_DATA[:size])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2000), st.integers(0, 1000))
def test_resume_from_stored_frontier(start: int, count: int) -> None:
    """A range rebuilt from (size, hashes) continues exactly like the original."""
    r = CompactRange(start, _frontier(start))
    r.extend(LEAVES[start : start + count])
    assert r.size == start + count
    assert r.root() == naive.mth(ENTRY_DATA[: start + count])


def test_extend_in_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merkle.compact, "_CHUNK", 7)
    r = CompactRange()
    r.extend(h for h in LEAVES[:1000])
    assert r.root() == naive.mth(ENTRY_DATA[:1000])


def test_bad_leaf_appends_nothing() -> None:
    r = CompactRange()
    r.extend(LEAVES[:5])
    before = r.to_bytes()
    for bad in [b"", b"\x00" * 31, b"\x00" * 33, bytearray(32), "x" * 32, None]:
        with pytest.raises(MalformedError):
            r.extend([LEAVES[5], bad])  # type: ignore[list-item]
        with pytest.raises(MalformedError):
            r.append(bad)  # type: ignore[arg-type]
        assert r.to_bytes() == before


def test_full_tree_cannot_grow() -> None:
    h = LEAVES[0]
    r = CompactRange(MAX_TREE_SIZE, [h] * 63)
    with pytest.raises(MalformedError):
        r.append(h)
    with pytest.raises(MalformedError):
        r.extend([h])
    almost = CompactRange(MAX_TREE_SIZE - 1, [h] * 62)
    with pytest.raises(MalformedError):
        almost.extend([h, h])
    almost.extend([h])
    assert almost.size == MAX_TREE_SIZE


def test_serialised_form() -> None:
    r = CompactRange()
    r.extend(LEAVES[:6])
    data = r.to_bytes()
    assert data[:8] == (6).to_bytes(8, "big")
    assert data[8:] == b"".join(_frontier(6))
    assert len(data) == 8 + 2 * 32


BAD_BYTES: list[bytes] = [
    b"",
    bytes(7),
    bytes(9),  # size 0 with a stray byte
    (1).to_bytes(8, "big"),  # size 1 without its hash
    (1).to_bytes(8, "big") + bytes(31),
    (1).to_bytes(8, "big") + bytes(33),
    (2).to_bytes(8, "big") + bytes(64),  # size 2 has one hash, not two
    (2**63).to_bytes(8, "big") + bytes(32),  # beyond MAX_TREE_SIZE
    b"\xff" * 8 + bytes(64 * 32),
]


@pytest.mark.parametrize("data", BAD_BYTES)
def test_from_bytes_is_strict(data: bytes) -> None:
    with pytest.raises(MalformedError):
        CompactRange.from_bytes(data)


def test_from_bytes_rejects_other_types() -> None:
    with pytest.raises(MalformedError):
        CompactRange.from_bytes(bytearray(8))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "hashes"),
    [
        (1, []),
        (0, [LEAVES[0]]),
        (3, [LEAVES[0]]),
        (2, [b"\x00" * 31]),
        (-1, []),
        (MAX_TREE_SIZE + 1, [LEAVES[0]] * 64),
        (True, [LEAVES[0]]),
    ],
)
def test_constructor_is_strict(size: int, hashes: list[bytes]) -> None:
    with pytest.raises(MalformedError):
        CompactRange(size, hashes)


def test_value_semantics() -> None:
    a = CompactRange(3, _frontier(3))
    b = CompactRange(3, _frontier(3))
    assert a == b
    assert a != CompactRange(2, _frontier(2))
    assert a != "CompactRange"
    with pytest.raises(TypeError):
        hash(a)
    assert repr(a) == f"CompactRange(size=3, root={naive.mth(ENTRY_DATA[:3]).hex()})"
    a.append(LEAVES[3])
    assert a != b
    assert b.size == 3
