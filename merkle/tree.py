"""RFC 6962 / RFC 9162 Merkle trees: the nodes a proof needs, building and verifying proofs.

Every proof is built in three steps, so the storage read stays outside this pure module:

1. compute which stored complete subtrees are needed (:func:`inclusion_nodes`,
   :func:`consistency_nodes`, :func:`root_nodes`);
2. the caller reads their hashes (one storage call);
3. combine them (:func:`build_inclusion_proof`, :func:`build_consistency_proof`,
   :func:`root_from_hashes`).

A :class:`Node` is a *complete* subtree of ``2**level`` leaves; the proof elements of RFC 6962
§2.1.1 / §2.1.2 that cover an incomplete subtree on the right edge of the tree are the fold of
several complete nodes, largest first (the same decomposition as the tree's own root).

Verification follows the iterative algorithms of RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2
(consistency). A proof whose length is not exactly the one determined by ``(index, tree_size)``
or ``(first_size, second_size)`` is rejected before any hashing.

Errors: :class:`~merkle.errors.MalformedError` for arguments that are malformed on their own (not
an ``int``, negative, above :data:`MAX_TREE_SIZE`, a root or leaf hash that is not 32 bytes);
:class:`~merkle.errors.ProofError` when no valid proof can exist for the arguments (index beyond
the tree, first size above the second), the proof has the wrong shape (length, element sizes),
or it leads to another root (``expected`` and ``computed`` are then set).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from merkle.errors import MalformedError, ProofError
from merkle.hashing import EMPTY_ROOT, HASH_SIZE

__all__ = [
    "MAX_TREE_SIZE",
    "Node",
    "build_consistency_proof",
    "build_inclusion_proof",
    "consistency_nodes",
    "inclusion_nodes",
    "root_from_hashes",
    "root_from_inclusion_proof",
    "root_nodes",
    "verify_consistency",
    "verify_inclusion",
]

MAX_TREE_SIZE = (1 << 63) - 1
"""The largest tree size (and so the largest leaf count of any subtree) accepted: 2**63 - 1."""

_sha256 = hashlib.sha256
_NODE_PREFIX = b"\x01"
_ONLY_BYTES = {bytes}
_ONLY_HASH_SIZE = {HASH_SIZE}


def _require_int(name: str, value: object, low: int, high: int) -> int:
    """Return ``value`` if it is an ``int`` (not ``bool``) with ``low <= value <= high``.

    Raises MalformedError otherwise.
    """
    if type(value) is not int:
        raise MalformedError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise MalformedError(f"{name} {value} is outside {low}..{high}")
    return value


def _require_hash(name: str, value: object) -> bytes:
    """Return ``value`` if it is a 32-byte ``bytes``; raises MalformedError otherwise."""
    if type(value) is not bytes or len(value) != HASH_SIZE:
        raise MalformedError(f"{name} must be {HASH_SIZE} bytes")
    return value


def _require_hashes(name: str, values: Sequence[object], error: type[Exception]) -> None:
    """Raise ``error`` unless every element of ``values`` is a 32-byte ``bytes``."""
    # The set comparisons run in C; the loop below only names the culprit.
    if not values:
        return
    as_bytes = cast("Sequence[bytes]", values)
    if set(map(type, values)) == _ONLY_BYTES and set(map(len, as_bytes)) == _ONLY_HASH_SIZE:
        return
    for i, value in enumerate(values):
        if type(value) is not bytes or len(value) != HASH_SIZE:
            raise error(f"{name}[{i}] must be {HASH_SIZE} bytes")


def _hash_pairs(hashes: Sequence[bytes]) -> list[bytes]:
    """Return ``node_hash(h[0], h[1]), node_hash(h[2], h[3]), ...``; an odd last hash is dropped.

    RFC 6962 §2.1 interior node hash, in bulk (one list comprehension, no per-pair call).
    Precondition: every element is a 32-byte hash (not checked here).
    """
    sha256 = _sha256
    prefix = _NODE_PREFIX
    it = iter(hashes)
    return [sha256(prefix + left + right).digest() for left, right in zip(it, it, strict=False)]


def _subtree_root(hashes: Sequence[bytes]) -> bytes:
    """Return the root of the complete subtree whose leaf-level hashes are ``hashes``.

    Precondition: ``len(hashes)`` is a power of two and each element a 32-byte hash.
    """
    level = list(hashes)
    while len(level) > 1:
        level = _hash_pairs(level)
    return level[0]


@dataclass(frozen=True, slots=True, order=True)
class Node:
    """The complete subtree of ``2**level`` leaves starting at leaf ``index * 2**level``.

    Its hash is ``MTH(D[index * 2**level : (index + 1) * 2**level])`` (RFC 6962 §2.1). Level 0
    nodes are leaf hashes. Example: ``Node(level=2, index=1)`` covers leaves 4, 5, 6 and 7.

    Requires ints, ``level >= 0``, ``index >= 0`` and the subtree to end within
    :data:`MAX_TREE_SIZE` leaves. Raises MalformedError.
    """

    level: int
    index: int

    def __post_init__(self) -> None:
        _require_int("level", self.level, 0, 62)
        _require_int("index", self.index, 0, MAX_TREE_SIZE)
        if (self.index + 1) << self.level > MAX_TREE_SIZE:
            raise MalformedError(f"node {self.level}/{self.index} ends beyond {MAX_TREE_SIZE}")

    @property
    def start(self) -> int:
        """The first leaf index the node covers."""
        return self.index << self.level

    @property
    def end(self) -> int:
        """One past the last leaf index the node covers."""
        return (self.index + 1) << self.level


def _range_nodes(start: int, end: int) -> list[Node]:
    """Return the complete subtrees that make up leaves ``[start, end)``, largest first.

    Precondition: ``start`` is a multiple of the largest power of two ``<= end - start`` (true
    of every range a proof or a root uses), so the decomposition follows the set bits of the
    length.
    """
    nodes = []
    length = end - start
    for level in range(length.bit_length() - 1, -1, -1):
        if length >> level & 1:
            nodes.append(Node(level, start >> level))
            start += 1 << level
    return nodes


def root_nodes(tree_size: int) -> list[Node]:
    """Return the complete subtrees that make up a tree of ``tree_size`` leaves, left to right.

    One node per set bit of ``tree_size``, largest first; folding their hashes right to left
    (:func:`root_from_hashes`) gives MTH(D[tree_size]) (RFC 6962 §2.1). Example: size 6 gives
    ``[Node(2, 0), Node(1, 2)]``; size 0 gives ``[]``.

    Requires ``0 <= tree_size <= MAX_TREE_SIZE``. Raises MalformedError.
    """
    _require_int("tree_size", tree_size, 0, MAX_TREE_SIZE)
    return _range_nodes(0, tree_size)


def root_from_hashes(hashes: Sequence[bytes]) -> bytes:
    """Return the root of a range from the hashes of its complete subtrees, largest first.

    Folds right to left: ``[a, b, c]`` gives ``node_hash(a, node_hash(b, c))``, so the hashes of
    :func:`root_nodes` give MTH(D[n]) (RFC 6962 §2.1) and ``[]`` gives :data:`EMPTY_ROOT`.

    Raises MalformedError if an element is not a 32-byte hash.
    """
    _require_hashes("hashes", hashes, MalformedError)
    if not hashes:
        return EMPTY_ROOT
    sha256 = _sha256
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = sha256(_NODE_PREFIX + left + root).digest()
    return root


def _inclusion_ranges(index: int, tree_size: int) -> list[tuple[int, int]]:
    """Return the leaf ranges ``[lo, hi)`` whose MTH make up PATH(index, D[tree_size]), leaf up.

    RFC 6962 §2.1.1, unrolled: split at the largest power of two ``k < n``, keep the half that
    holds ``index`` and record the other half. Precondition: ``0 <= index < tree_size``.
    """
    ranges = []
    lo, hi = 0, tree_size
    while hi - lo > 1:
        mid = lo + (1 << ((hi - lo - 1).bit_length() - 1))
        if index < mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo = mid
    ranges.reverse()
    return ranges


def _consistency_ranges(first_size: int, second_size: int) -> list[tuple[int, int]]:
    """Return the leaf ranges whose MTH make up PROOF(first_size, D[second_size]), in proof order.

    RFC 6962 §2.1.2 SUBPROOF, unrolled: ``complete`` is SUBPROOF's boolean ``b``.
    Precondition: ``0 < first_size < second_size``.
    """
    ranges = []
    lo, hi = 0, second_size
    complete = True
    while first_size != hi:
        mid = lo + (1 << ((hi - lo - 1).bit_length() - 1))
        if first_size <= mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo = mid
            complete = False
    if not complete:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def _check_index(index: int, tree_size: int) -> None:
    """Raise MalformedError unless ``0 <= index < tree_size <= MAX_TREE_SIZE``."""
    _require_int("tree_size", tree_size, 0, MAX_TREE_SIZE)
    _require_int("index", index, 0, MAX_TREE_SIZE)
    if index >= tree_size:
        raise MalformedError(f"index {index} is not below tree_size {tree_size}")


def _check_sizes(first_size: int, second_size: int) -> None:
    """Raise MalformedError unless ``0 <= first_size <= second_size <= MAX_TREE_SIZE``."""
    _require_int("first_size", first_size, 0, MAX_TREE_SIZE)
    _require_int("second_size", second_size, 0, MAX_TREE_SIZE)
    if first_size > second_size:
        raise MalformedError(f"first_size {first_size} is above second_size {second_size}")


def _nodes_of(ranges: list[tuple[int, int]]) -> list[Node]:
    """Return the complete nodes of every range, range after range."""
    return [node for lo, hi in ranges for node in _range_nodes(lo, hi)]


def _fold_ranges(ranges: list[tuple[int, int]], hashes: Sequence[bytes]) -> list[bytes]:
    """Return one MTH per range from the hashes of the ranges' complete nodes, in order.

    Raises MalformedError if the count of hashes is wrong or one is not 32 bytes.
    """
    counts = [(hi - lo).bit_count() for lo, hi in ranges]
    if len(hashes) != sum(counts):
        raise MalformedError(f"expected {sum(counts)} node hashes, got {len(hashes)}")
    _require_hashes("hashes", hashes, MalformedError)
    proof = []
    at = 0
    for count in counts:
        proof.append(root_from_hashes(hashes[at : at + count]) if count > 1 else hashes[at])
        at += count
    return proof


def inclusion_nodes(index: int, tree_size: int) -> list[Node]:
    """Return the stored complete subtrees needed for PATH(index, D[tree_size]) (RFC 6962 §2.1.1).

    In proof order (leaf upward); an incomplete right sibling contributes its complete
    subtrees largest first. Give their hashes, same order, to :func:`build_inclusion_proof`.
    Example: ``inclusion_nodes(2, 3)`` is ``[Node(1, 0)]``.

    Requires ``0 <= index < tree_size <= MAX_TREE_SIZE``. Raises MalformedError.
    """
    _check_index(index, tree_size)
    return _nodes_of(_inclusion_ranges(index, tree_size))


def build_inclusion_proof(index: int, tree_size: int, hashes: Sequence[bytes]) -> list[bytes]:
    """Return PATH(index, D[tree_size]) (RFC 6962 §2.1.1) from the hashes of its nodes.

    ``hashes`` are the values of :func:`inclusion_nodes` ``(index, tree_size)``, same order.
    Requires ``0 <= index < tree_size <= MAX_TREE_SIZE``. Raises MalformedError for bad
    arguments or a wrong number or size of hashes.
    """
    _check_index(index, tree_size)
    return _fold_ranges(_inclusion_ranges(index, tree_size), hashes)


def consistency_nodes(first_size: int, second_size: int) -> list[Node]:
    """Return the stored complete subtrees needed for PROOF(first_size, D[second_size]).

    RFC 6962 §2.1.2, in proof order; empty when ``first_size`` is 0 or equals ``second_size``
    (those proofs are empty). Example: ``consistency_nodes(3, 4)`` is
    ``[Node(0, 2), Node(0, 3), Node(1, 0)]``.

    Requires ``0 <= first_size <= second_size <= MAX_TREE_SIZE``. Raises MalformedError.
    """
    _check_sizes(first_size, second_size)
    if first_size in (0, second_size):
        return []
    return _nodes_of(_consistency_ranges(first_size, second_size))


def build_consistency_proof(
    first_size: int, second_size: int, hashes: Sequence[bytes]
) -> list[bytes]:
    """Return PROOF(first_size, D[second_size]) (RFC 6962 §2.1.2) from the hashes of its nodes.

    ``hashes`` are the values of :func:`consistency_nodes` ``(first_size, second_size)``, same
    order. Requires ``0 <= first_size <= second_size <= MAX_TREE_SIZE``. Raises
    MalformedError for bad arguments or a wrong number or size of hashes.
    """
    _check_sizes(first_size, second_size)
    if first_size in (0, second_size):
        return _fold_ranges([], hashes)
    return _fold_ranges(_consistency_ranges(first_size, second_size), hashes)


def _inclusion_proof_length(index: int, tree_size: int) -> int:
    """Return len(PATH(index, D[tree_size])): the inner levels below the split with the
    right border of the tree, plus one left sibling per set bit of the index above them.

    Precondition: ``0 <= index < tree_size``.
    """
    inner = (index ^ (tree_size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_proof_length(first_size: int, second_size: int) -> int:
    """Return len(PROOF(first_size, D[second_size])); precondition ``0 < first < second``.

    The inclusion path of leaf ``first_size - 1`` in the second tree, without the levels below
    the largest complete subtree the first tree ends with, plus that subtree's own hash unless
    it is the whole first tree (``first_size`` a power of two).
    """
    last = first_size - 1
    shift = (first_size & -first_size).bit_length() - 1
    length = _inclusion_proof_length(last, second_size) - shift
    return length if first_size == 1 << shift else length + 1


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """Return the root that ``proof`` leads to for ``leaf_hash`` at ``index`` (RFC 9162 §2.1.3.2).

    Requires ``0 <= index``, ``tree_size <= MAX_TREE_SIZE`` and a 32-byte ``leaf_hash``
    (MalformedError otherwise). Raises ProofError if ``index >= tree_size``, the proof length is
    not exactly the one ``(index, tree_size)`` determines, or an element is not 32 bytes.
    """
    _require_hash("leaf_hash", leaf_hash)
    _require_int("tree_size", tree_size, 0, MAX_TREE_SIZE)
    _require_int("index", index, 0, MAX_TREE_SIZE)
    if index >= tree_size:
        raise ProofError(f"index {index} is not below tree_size {tree_size}")
    want = _inclusion_proof_length(index, tree_size)
    if len(proof) != want:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, want {want}")
    _require_hashes("proof", proof, ProofError)

    # RFC 9162 §2.1.3.2 with its branches resolved in advance. While fn != sn, the test
    # "LSB(fn) set or fn == sn" is just LSB(fn); fn and sn meet after `inner` shifts. From then
    # on every step takes the first branch and drops the lowest set bit of sn, so sn reaches 0
    # after exactly popcount(sn) more steps: the proof length checked above.
    sha256 = _sha256
    prefix = _NODE_PREFIX
    inner = (index ^ (tree_size - 1)).bit_length()
    fn = index
    r = leaf_hash
    for p in proof[:inner]:
        r = sha256(prefix + p + r if fn & 1 else prefix + r + p).digest()
        fn >>= 1
    for p in proof[inner:]:
        r = sha256(prefix + p + r).digest()
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Check that ``proof`` shows ``leaf_hash`` at ``index`` in the tree ``(tree_size, root_hash)``.

    RFC 9162 §2.1.3.2. Returns None on success. A size-1 tree needs an empty proof and its root
    is the leaf hash. Raises MalformedError for malformed arguments and ProofError (with
    ``expected`` = ``root_hash`` and ``computed`` when the proof got that far) otherwise; see
    :func:`root_from_inclusion_proof`.
    """
    _require_hash("root_hash", root_hash)
    computed = root_from_inclusion_proof(leaf_hash, index, tree_size, proof)
    if computed != root_hash:
        raise ProofError(
            "inclusion proof leads to another root", expected=root_hash, computed=computed
        )


def verify_consistency(
    first_size: int,
    second_size: int,
    first_root: bytes,
    second_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that the tree ``(second_size, second_root)`` extends ``(first_size, first_root)``.

    RFC 9162 §2.1.4.2. Returns None on success. Equal sizes need an empty proof and equal
    roots; from size 0 the proof must be empty and ``first_root`` must be :data:`EMPTY_ROOT`.

    Requires ints in ``0..MAX_TREE_SIZE`` and 32-byte roots (MalformedError otherwise). Raises
    ProofError if ``first_size > second_size``, the proof length is not exactly the one the
    sizes determine, an element is not 32 bytes, or a root does not match (``expected`` is the
    given root, ``computed`` the one the proof leads to).
    """
    _require_int("first_size", first_size, 0, MAX_TREE_SIZE)
    _require_int("second_size", second_size, 0, MAX_TREE_SIZE)
    _require_hash("first_root", first_root)
    _require_hash("second_root", second_root)
    if first_size > second_size:
        raise ProofError(f"first_size {first_size} is above second_size {second_size}")
    if first_size == second_size or first_size == 0:
        if proof:
            raise ProofError(f"consistency proof from size {first_size} must be empty")
        if first_size == 0 and first_root != EMPTY_ROOT:
            raise ProofError(
                "the root of the empty tree is SHA-256('')",
                expected=first_root,
                computed=EMPTY_ROOT,
            )
        if first_size == second_size and first_root != second_root:
            raise ProofError(
                "equal tree sizes with different roots", expected=second_root, computed=first_root
            )
        return
    want = _consistency_proof_length(first_size, second_size)
    if len(proof) != want:
        raise ProofError(f"consistency proof has {len(proof)} hashes, want {want}")
    _require_hashes("proof", proof, ProofError)

    # RFC 9162 §2.1.4.2 with its branches resolved in advance, as in root_from_inclusion_proof:
    # step 4 shifts out the trailing one bits of fn = first_size - 1; then, while fn != sn, a set
    # LSB(fn) means a left sibling (both roots), a clear one a right sibling (second root only);
    # once fn == sn every remaining element is a left sibling and sn reaches 0 exactly at the
    # end of a proof of the length checked above.
    sha256 = _sha256
    prefix = _NODE_PREFIX
    shift = (first_size & -first_size).bit_length() - 1  # step 4
    fn, sn = (first_size - 1) >> shift, (second_size - 1) >> shift
    inner = (fn ^ sn).bit_length()
    # Step 2: a first tree that is one complete subtree is its own first path element.
    if first_size & (first_size - 1) == 0:
        fr = sr = first_root
        rest = proof
    else:
        fr = sr = proof[0]
        rest = proof[1:]
    for c in rest[:inner]:
        if fn & 1:
            fr = sha256(prefix + c + fr).digest()
            sr = sha256(prefix + c + sr).digest()
        else:
            sr = sha256(prefix + sr + c).digest()
        fn >>= 1
    for c in rest[inner:]:
        fr = sha256(prefix + c + fr).digest()
        sr = sha256(prefix + c + sr).digest()
    if fr != first_root:
        raise ProofError(
            "consistency proof leads to another first root", expected=first_root, computed=fr
        )
    if sr != second_root:
        raise ProofError(
            "consistency proof leads to another second root", expected=second_root, computed=sr
        )
