"""merkle.tree: known answers, agreement with the naive RFC 6962 reference, mutation tables and
argument strictness.

The known answers are the RFC 6962 test inputs used across Certificate Transparency
implementations (Trillian, transparency-dev/merkle, Go's sumdb/tlog). Reproduce any of them with
nothing but hashlib, e.g. the size-2 root::

    python3 -c "import hashlib as h; l=lambda d: h.sha256(b'\\0'+d).digest(); \\
        print(h.sha256(b'\\1'+l(b'')+l(b'\\0')).hexdigest())"

or with the naive reference: ``tests.naive.mth(ENTRIES[:n]).hex()``, ``tests.naive.path(m,
ENTRIES[:n])``, ``tests.naive.proof(m, ENTRIES[:n])``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merkle.errors import MalformedError, MerkleError, ProofError
from merkle.hashing import EMPTY_ROOT, leaf_hash, node_hash
from merkle.tree import (
    MAX_TREE_SIZE,
    Node,
    build_consistency_proof,
    build_inclusion_proof,
    consistency_nodes,
    inclusion_nodes,
    root_from_hashes,
    root_from_inclusion_proof,
    root_nodes,
    verify_consistency,
    verify_inclusion,
)
from tests import naive

ENTRIES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
"""MTH(D[n]) of the first n ENTRIES, n = 0..8."""

KNOWN_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (0, 1, []),
]
"""(index, tree_size, PATH(index, D[tree_size])) over ENTRIES."""

KNOWN_CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (8, 8, []),
    (0, 8, []),
]
"""(first_size, second_size, PROOF(first_size, D[second_size])) over ENTRIES."""

BIG = [i.to_bytes(4, "big") for i in range(4100)]
"""Distinct entries for the larger property tests (distinct, so no two siblings are equal)."""

SETTINGS = settings(max_examples=60, deadline=None)


def _node_hashes(nodes: list[Node], entries: list[bytes]) -> list[bytes]:
    """Hashes of ``nodes`` computed by the naive reference."""
    return [naive.node(n.level, n.index, entries) for n in nodes]


def _stored_root(tree_size: int, entries: list[bytes]) -> bytes:
    return root_from_hashes(_node_hashes(root_nodes(tree_size), entries))


# --- known answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(9))
def test_known_roots(size: int) -> None:
    want = bytes.fromhex(ROOTS[size])
    assert naive.mth(ENTRIES[:size]) == want
    assert _stored_root(size, ENTRIES) == want


def test_empty_root_and_single_leaf() -> None:
    assert root_from_hashes([]) == EMPTY_ROOT == bytes.fromhex(ROOTS[0])
    one = leaf_hash(b"")
    assert root_from_hashes([one]) == one == bytes.fromhex(ROOTS[1])
    verify_inclusion(one, 0, 1, [], one)


@pytest.mark.parametrize(("index", "size", "proof_hex"), KNOWN_INCLUSION)
def test_known_inclusion_proofs(index: int, size: int, proof_hex: list[str]) -> None:
    want = [bytes.fromhex(h) for h in proof_hex]
    nodes = inclusion_nodes(index, size)
    assert build_inclusion_proof(index, size, _node_hashes(nodes, ENTRIES)) == want
    root = bytes.fromhex(ROOTS[size])
    verify_inclusion(leaf_hash(ENTRIES[index]), index, size, want, root)
    assert root_from_inclusion_proof(leaf_hash(ENTRIES[index]), index, size, want) == root


@pytest.mark.parametrize(("first", "second", "proof_hex"), KNOWN_CONSISTENCY)
def test_known_consistency_proofs(first: int, second: int, proof_hex: list[str]) -> None:
    want = [bytes.fromhex(h) for h in proof_hex]
    nodes = consistency_nodes(first, second)
    assert build_consistency_proof(first, second, _node_hashes(nodes, ENTRIES)) == want
    root1, root2 = bytes.fromhex(ROOTS[first]), bytes.fromhex(ROOTS[second])
    verify_consistency(first, second, root1, root2, want)


def test_known_node_lists() -> None:
    assert root_nodes(0) == []
    assert root_nodes(6) == [Node(2, 0), Node(1, 2)]
    assert root_nodes(7) == [Node(2, 0), Node(1, 2), Node(0, 6)]
    assert inclusion_nodes(2, 3) == [Node(1, 0)]
    # PATH(0, D[7]): leaf 1, node 2..3, then MTH(D[4:7]) = fold of Node(1, 2) and Node(0, 6).
    assert inclusion_nodes(0, 7) == [Node(0, 1), Node(1, 1), Node(1, 2), Node(0, 6)]
    assert consistency_nodes(3, 4) == [Node(0, 2), Node(0, 3), Node(1, 0)]
    assert consistency_nodes(4, 8) == [Node(2, 1)]
    assert consistency_nodes(0, 5) == consistency_nodes(5, 5) == []
    assert Node(2, 1).start == 4
    assert Node(2, 1).end == 8


# --- agreement with the naive reference -------------------------------------------------------


@st.composite
def index_and_size(draw: st.DrawFn, max_size: int = len(BIG)) -> tuple[int, int]:
    size = draw(st.integers(1, max_size))
    return draw(st.integers(0, size - 1)), size


@st.composite
def two_sizes(draw: st.DrawFn, max_size: int = len(BIG)) -> tuple[int, int]:
    second = draw(st.integers(1, max_size))
    return draw(st.integers(1, second)), second


@SETTINGS
@given(index_and_size())
def test_inclusion_matches_naive(case: tuple[int, int]) -> None:
    index, size = case
    entries = BIG[:size]
    proof = build_inclusion_proof(index, size, _node_hashes(inclusion_nodes(index, size), BIG))
    assert proof == naive.path(index, entries)
    root = naive.mth(entries)
    assert _stored_root(size, BIG) == root
    verify_inclusion(naive.leaf(BIG[index]), index, size, proof, root)


@SETTINGS
@given(two_sizes())
def test_consistency_matches_naive(case: tuple[int, int]) -> None:
    first, second = case
    nodes = consistency_nodes(first, second)
    proof = build_consistency_proof(first, second, _node_hashes(nodes, BIG))
    assert proof == naive.proof(first, BIG[:second])
    verify_consistency(first, second, naive.mth(BIG[:first]), naive.mth(BIG[:second]), proof)


def test_every_small_proof_matches_naive() -> None:
    """Exhaustive over all sizes up to 64: every index and every first size."""
    for size in range(1, 65):
        entries = BIG[:size]
        root = naive.mth(entries)
        for index in range(size):
            proof = build_inclusion_proof(
                index, size, _node_hashes(inclusion_nodes(index, size), BIG)
            )
            assert proof == naive.path(index, entries)
            verify_inclusion(naive.leaf(BIG[index]), index, size, proof, root)
        for first in range(size + 1):
            proof = build_consistency_proof(
                first, size, _node_hashes(consistency_nodes(first, size), BIG)
            )
            assert proof == (naive.proof(first, entries) if first else [])
            verify_consistency(first, size, naive.mth(BIG[:first]), root, proof)


# --- mutation tables --------------------------------------------------------------------------

INCLUSION_CASES = [(0, 2), (1, 2), (2, 3), (5, 8), (6, 7), (0, 1000), (517, 1000), (999, 1000)]
CONSISTENCY_CASES = [(1, 2), (2, 3), (3, 7), (4, 8), (6, 8), (1, 1000), (511, 1000), (999, 1000)]


def _bit_flips(values: list[bytes]) -> list[list[bytes]]:
    """Every copy of ``values`` with exactly one bit flipped."""
    out = []
    for i, value in enumerate(values):
        for bit in range(len(value) * 8):
            flipped = bytearray(value)
            flipped[bit // 8] ^= 1 << (bit % 8)
            out.append([*values[:i], bytes(flipped), *values[i + 1 :]])
    return out


def _shape_mutations(proof: list[bytes]) -> list[list[bytes]]:
    """Every proof with one hash dropped, one hash added anywhere, or two neighbours swapped."""
    extra = hashlib.sha256(b"extra").digest()
    out = [[*proof[:i], *proof[i + 1 :]] for i in range(len(proof))]
    for i in range(len(proof) + 1):
        out.append([*proof[:i], extra, *proof[i:]])
        if proof:
            out.append([*proof[:i], proof[min(i, len(proof) - 1)], *proof[i:]])
    out += [[*proof[:i], proof[i + 1], proof[i], *proof[i + 2 :]] for i in range(len(proof) - 1)]
    return out


def _rejects(verify: Callable[..., None], *args: object) -> bool:
    """True if ``verify(*args)`` raises a MerkleError."""
    try:
        verify(*args)
    except MerkleError:
        return True
    return False


@pytest.mark.parametrize(("index", "size"), INCLUSION_CASES)
def test_inclusion_mutations_fail(index: int, size: int) -> None:
    proof = naive.path(index, BIG[:size])
    root = naive.mth(BIG[:size])
    leaf = naive.leaf(BIG[index])
    verify_inclusion(leaf, index, size, proof, root)

    for bad in _bit_flips(proof) + _shape_mutations(proof):
        assert _rejects(verify_inclusion, leaf, index, size, bad, root), bad
    for (bad_leaf,) in _bit_flips([leaf]):
        assert _rejects(verify_inclusion, bad_leaf, index, size, proof, root)
    for (bad_root,) in _bit_flips([root]):
        with pytest.raises(ProofError) as info:
            verify_inclusion(leaf, index, size, proof, bad_root)
        assert info.value.expected == bad_root
        assert info.value.computed == root
    for other in {*range(min(size, 64)), size - 1, index ^ 1, index + 1, index - 1, size} - {index}:
        assert _rejects(verify_inclusion, leaf, other, size, proof, root), other
    for other in {1, index + 1, size - 1, size + 1, size * 2, size // 2, size + 64} - {size}:
        if 0 < other <= len(BIG):
            other_root = naive.mth(BIG[:other])
            assert _rejects(verify_inclusion, leaf, index, other, proof, other_root), other


@pytest.mark.parametrize(("first", "second"), CONSISTENCY_CASES)
def test_consistency_mutations_fail(first: int, second: int) -> None:
    proof = naive.proof(first, BIG[:second])
    root1, root2 = naive.mth(BIG[:first]), naive.mth(BIG[:second])
    verify_consistency(first, second, root1, root2, proof)

    for bad in _bit_flips(proof) + _shape_mutations(proof):
        assert _rejects(verify_consistency, first, second, root1, root2, bad), bad
    for bad_root1, bad_root2 in [(r, root2) for (r,) in _bit_flips([root1])] + [
        (root1, r) for (r,) in _bit_flips([root2])
    ]:
        with pytest.raises(ProofError):
            verify_consistency(first, second, bad_root1, bad_root2, proof)
    for other in {1, first - 1, first + 1, first * 2, first // 2, second - 1} - {first}:
        if 0 < other < second:
            other_root = naive.mth(BIG[:other])
            assert _rejects(verify_consistency, other, second, other_root, root2, proof), other
    for other in {first + 1, second - 1, second + 1, second * 2, second + 64} - {second}:
        if first < other <= len(BIG):
            other_root = naive.mth(BIG[:other])
            assert _rejects(verify_consistency, first, other, root1, other_root, proof), other
    # Swapped roots and the proof against itself.
    assert _rejects(verify_consistency, first, second, root2, root1, proof)
    assert _rejects(verify_consistency, first, second, root1, root1, proof)


@SETTINGS
@given(index_and_size(), st.data())
def test_random_inclusion_mutation_fails(case: tuple[int, int], data: st.DataObject) -> None:
    index, size = case
    proof = naive.path(index, BIG[:size])
    root = naive.mth(BIG[:size])
    leaf = naive.leaf(BIG[index])
    candidates = _shape_mutations(proof)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        flipped = bytearray(proof[i])
        flipped[bit // 8] ^= 1 << (bit % 8)
        candidates.append([*proof[:i], bytes(flipped), *proof[i + 1 :]])
    bad = data.draw(st.sampled_from(candidates))
    assert _rejects(verify_inclusion, leaf, index, size, bad, root)
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index)) if size > 1 else 1
    assert _rejects(verify_inclusion, leaf, other, size, proof, root)


@SETTINGS
@given(st.integers(2, len(BIG)).flatmap(lambda n: st.tuples(st.integers(1, n - 1), st.just(n))))
def test_random_consistency_mutation_fails(case: tuple[int, int]) -> None:
    first, second = case
    proof = naive.proof(first, BIG[:second])
    root1, root2 = naive.mth(BIG[:first]), naive.mth(BIG[:second])
    for bad in _shape_mutations(proof):
        assert _rejects(verify_consistency, first, second, root1, root2, bad)


@SETTINGS
@given(index_and_size(), st.data())
def test_inclusion_agrees_with_literal_rfc9162(case: tuple[int, int], data: st.DataObject) -> None:
    """Accept/reject exactly as the step-by-step RFC 9162 loop, for good and mutated proofs."""
    index, size = case
    proof = naive.path(index, BIG[:size])
    root = naive.mth(BIG[:size])
    leaf = naive.leaf(BIG[index])
    other_index = data.draw(st.integers(0, size))
    other_size = data.draw(st.integers(1, len(BIG)))
    candidates = [
        (proof, index, size, root),
        *((bad, index, size, root) for bad in _shape_mutations(proof)),
        (proof, other_index, size, root),
        (proof, index, other_size, root),
        (proof, index, other_size, naive.mth(BIG[:other_size])),
    ]
    for p, i, n, r in candidates:
        assert _rejects(verify_inclusion, leaf, i, n, p, r) == (
            not naive.rfc9162_verify_inclusion(leaf, i, n, p, r)
        ), (i, n, len(p))


@SETTINGS
@given(st.integers(2, len(BIG)).flatmap(lambda n: st.tuples(st.integers(1, n - 1), st.just(n))))
def test_consistency_agrees_with_literal_rfc9162(case: tuple[int, int]) -> None:
    first, second = case
    proof = naive.proof(first, BIG[:second])
    root1, root2 = naive.mth(BIG[:first]), naive.mth(BIG[:second])
    for p in [proof, *_shape_mutations(proof)]:
        assert _rejects(verify_consistency, first, second, root1, root2, p) == (
            not naive.rfc9162_verify_consistency(first, second, root1, root2, p)
        ), len(p)


# --- trees too large to build -----------------------------------------------------------------


def _uniform_level_hashes() -> list[bytes]:
    """Node hashes of a tree whose leaves are all the same: level l is H(level l-1, level l-1)."""
    hashes = [leaf_hash(b"same")]
    for _ in range(63):
        hashes.append(node_hash(hashes[-1], hashes[-1]))
    return hashes


@pytest.mark.parametrize(
    ("index", "size"),
    [(0, MAX_TREE_SIZE), (MAX_TREE_SIZE - 1, MAX_TREE_SIZE), (2**62, 2**62 + 1), (12345, 2**40)],
)
def test_huge_tree_inclusion(index: int, size: int) -> None:
    level_hash = _uniform_level_hashes()
    nodes = inclusion_nodes(index, size)
    proof = build_inclusion_proof(index, size, [level_hash[n.level] for n in nodes])
    root = root_from_hashes([level_hash[n.level] for n in root_nodes(size)])
    verify_inclusion(level_hash[0], index, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(level_hash[0], index, size, proof[:-1], root)


@pytest.mark.parametrize(
    ("first", "second"),
    [(1, MAX_TREE_SIZE), (MAX_TREE_SIZE - 1, MAX_TREE_SIZE), (2**62, MAX_TREE_SIZE), (3, 2**40)],
)
def test_huge_tree_consistency(first: int, second: int) -> None:
    level_hash = _uniform_level_hashes()
    proof = build_consistency_proof(
        first, second, [level_hash[n.level] for n in consistency_nodes(first, second)]
    )
    root1 = root_from_hashes([level_hash[n.level] for n in root_nodes(first)])
    root2 = root_from_hashes([level_hash[n.level] for n in root_nodes(second)])
    verify_consistency(first, second, root1, root2, proof)
    with pytest.raises(ProofError):
        verify_consistency(first, second, root1, root2, [*proof, proof[0]])


# --- argument strictness ----------------------------------------------------------------------

BAD_INTS: list[object] = [-1, -(2**63), MAX_TREE_SIZE + 1, 2**64 - 1, 2**64, True, 1.0, "1", None]
BAD_HASHES: list[object] = [b"", b"\x00" * 31, b"\x00" * 33, bytearray(32), "0" * 32, None]
H = leaf_hash(b"x")


@pytest.mark.parametrize("bad", BAD_INTS)
def test_bad_ints_are_malformed(bad: object) -> None:
    calls: list[Callable[[], object]] = [
        lambda: root_nodes(bad),  # type: ignore[arg-type]
        lambda: inclusion_nodes(bad, 10),  # type: ignore[arg-type]
        lambda: inclusion_nodes(0, bad),  # type: ignore[arg-type]
        lambda: consistency_nodes(bad, MAX_TREE_SIZE),  # type: ignore[arg-type]
        lambda: consistency_nodes(0, bad),  # type: ignore[arg-type]
        lambda: build_inclusion_proof(bad, 10, []),  # type: ignore[arg-type]
        lambda: build_consistency_proof(1, bad, []),  # type: ignore[arg-type]
        lambda: verify_inclusion(H, bad, 10, [], H),  # type: ignore[arg-type]
        lambda: verify_inclusion(H, 0, bad, [], H),  # type: ignore[arg-type]
        lambda: root_from_inclusion_proof(H, bad, 10, []),  # type: ignore[arg-type]
        lambda: verify_consistency(bad, 10, H, H, []),  # type: ignore[arg-type]
        lambda: verify_consistency(0, bad, H, H, []),  # type: ignore[arg-type]
        lambda: Node(bad, 0),  # type: ignore[arg-type]
        lambda: Node(0, bad),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(MalformedError):
            call()


@pytest.mark.parametrize("bad", BAD_HASHES)
def test_bad_hashes(bad: object) -> None:
    good_proof = naive.path(1, BIG[:2])
    root = naive.mth(BIG[:2])
    leaf = naive.leaf(BIG[1])
    with pytest.raises(MalformedError):
        verify_inclusion(bad, 1, 2, good_proof, root)  # type: ignore[arg-type]
    with pytest.raises(MalformedError):
        verify_inclusion(leaf, 1, 2, good_proof, bad)  # type: ignore[arg-type]
    with pytest.raises(ProofError):
        verify_inclusion(leaf, 1, 2, [bad], root)  # type: ignore[list-item]
    with pytest.raises(MalformedError):
        verify_consistency(1, 2, bad, root, [root])  # type: ignore[arg-type]
    with pytest.raises(MalformedError):
        verify_consistency(1, 1, root, bad, [])  # type: ignore[arg-type]
    with pytest.raises(ProofError):
        verify_consistency(1, 2, naive.mth(BIG[:1]), root, [bad])  # type: ignore[list-item]
    with pytest.raises(MalformedError):
        root_from_hashes([H, bad])  # type: ignore[list-item]
    with pytest.raises(MalformedError):
        build_inclusion_proof(0, 2, [bad])  # type: ignore[list-item]


def test_impossible_combinations() -> None:
    with pytest.raises(ProofError) as info:
        verify_inclusion(H, 5, 5, [H, H, H], H)
    assert info.value.computed is None
    with pytest.raises(ProofError):
        verify_inclusion(H, 0, 0, [], H)
    with pytest.raises(ProofError):
        verify_consistency(5, 4, H, H, [H])
    with pytest.raises(ProofError):
        verify_consistency(0, 3, H, H, [])  # the empty tree's root is SHA-256("")
    verify_consistency(0, 3, EMPTY_ROOT, H, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ProofError):
        verify_consistency(0, 3, EMPTY_ROOT, H, [H])
    with pytest.raises(ProofError):
        verify_consistency(4, 4, H, EMPTY_ROOT, [])
    with pytest.raises(ProofError):
        verify_consistency(4, 4, H, H, [H])
    with pytest.raises(MalformedError):
        inclusion_nodes(5, 5)
    with pytest.raises(MalformedError):
        consistency_nodes(6, 5)
    with pytest.raises(MalformedError):
        build_inclusion_proof(0, 3, [H])  # two nodes needed
    with pytest.raises(MalformedError):
        build_consistency_proof(0, 3, [H])  # the proof from 0 is empty
    with pytest.raises(MalformedError):
        Node(62, 1)  # ends at 2**63, beyond MAX_TREE_SIZE
    with pytest.raises(MalformedError):
        Node(63, 0)
    assert Node(62, 0).end == 2**62
