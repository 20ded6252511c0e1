"""The compact range: the O(log n) append frontier of an RFC 6962 Merkle tree.

A tree of ``size`` leaves is the fold of one complete subtree per set bit of ``size``
(:func:`merkle.tree.root_nodes`). Keeping just those hashes is enough to append leaves and to
compute the root at every size, which is what the sequencer needs between batches.

Serialised form (:meth:`CompactRange.to_bytes`)::

    uint64 big-endian size || hash of root_nodes(size)[0] || ... (32 bytes each, largest first)

so a range of size 6 is 8 + 2 * 32 = 72 bytes and the empty range is 8 zero bytes.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence

from merkle.errors import MalformedError
from merkle.hashing import HASH_SIZE
from merkle.tree import (
    MAX_TREE_SIZE,
    _hash_pairs,
    _require_hash,
    _require_hashes,
    _require_int,
    root_from_hashes,
)

__all__ = ["CompactRange"]

_CHUNK = 1 << 16
"""Leaves hashed per bulk step of :meth:`CompactRange.extend` (bounds the memory it uses)."""

_sha256 = hashlib.sha256


class CompactRange:
    """The hashes of the complete subtrees of a tree of ``size`` leaves, largest first.

    Mutable: :meth:`append` and :meth:`extend` add leaves. Two ranges are equal when their
    sizes and hashes are. Example::

        r = CompactRange()
        r.extend([leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")])
        r.size == 3; len(r.hashes) == 2; r.root() == MTH of the three entries
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        """Start from a tree of ``size`` leaves given the hashes of ``root_nodes(size)``.

        Requires ``0 <= size <= MAX_TREE_SIZE`` and one 32-byte hash per set bit of ``size``.
        Raises MalformedError.
        """
        _require_int("size", size, 0, MAX_TREE_SIZE)
        hashes = list(hashes)
        if len(hashes) != size.bit_count():
            raise MalformedError(
                f"a compact range of size {size} has {size.bit_count()} hashes, not {len(hashes)}"
            )
        _require_hashes("hashes", hashes, MalformedError)
        self._size = size
        self._hashes = hashes

    @property
    def size(self) -> int:
        """The number of leaves in the tree."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The hashes of :func:`merkle.tree.root_nodes` ``(size)``, largest subtree first."""
        return tuple(self._hashes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable, so not hashable

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()})"

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf, given its RFC 6962 leaf hash, merging equal-sized subtrees.

        Requires a 32-byte hash and room below MAX_TREE_SIZE. Raises MalformedError.
        """
        _require_hash("leaf_hash", leaf_hash)
        if self._size >= MAX_TREE_SIZE:
            raise MalformedError(f"tree size would exceed {MAX_TREE_SIZE}")
        hashes = self._hashes
        sha256 = _sha256
        node = leaf_hash
        size = self._size
        while size & 1:
            node = sha256(b"\x01" + hashes.pop() + node).digest()
            size >>= 1
        hashes.append(node)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaves, given their leaf hashes in order.

        Hashes level by level in bulk (pairs of a whole level at once), in chunks of 65,536
        leaves. Requires 32-byte hashes and room below MAX_TREE_SIZE. Raises MalformedError;
        on error no leaf of the failing chunk is appended (earlier chunks stay appended).
        """
        iterator = iter(leaf_hashes)
        while chunk := list(itertools.islice(iterator, _CHUNK)):
            self._extend_chunk(chunk)

    def _extend_chunk(self, leaves: list[bytes]) -> None:
        """Append ``leaves`` (a non-empty list of leaf hashes); see :meth:`extend`."""
        _require_hashes("leaf_hashes", leaves, MalformedError)
        if len(leaves) > MAX_TREE_SIZE - self._size:
            raise MalformedError(f"tree size would exceed {MAX_TREE_SIZE}")
        frontier = list(self._hashes)
        new_low_first: list[bytes] = []
        level_nodes = leaves
        size = self._size  # the old size shifted right by the current level
        # At each level, the nodes not yet paired start at an even index: the old frontier's
        # node of this level (a left child still waiting for its sibling) if there is one,
        # then the new nodes. An odd one out is the new frontier's node of this level.
        while level_nodes:
            if size & 1:
                level_nodes = [frontier.pop(), *level_nodes]
            if len(level_nodes) & 1:
                new_low_first.append(level_nodes[-1])
            level_nodes = _hash_pairs(level_nodes)
            size >>= 1
        new_low_first.reverse()
        self._hashes = frontier + new_low_first
        self._size += len(leaves)

    def root(self) -> bytes:
        """Return MTH(D[size]) (RFC 6962 §2.1); :data:`merkle.hashing.EMPTY_ROOT` for size 0."""
        return root_from_hashes(self._hashes)

    def to_bytes(self) -> bytes:
        """Return ``uint64 big-endian size || hashes`` (see the module docstring)."""
        return self._size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactRange:
        """Parse the :meth:`to_bytes` form strictly.

        Requires exactly ``8 + 32 * popcount(size)`` bytes and ``size <= MAX_TREE_SIZE``.
        Raises MalformedError.
        """
        if not isinstance(data, bytes) or len(data) < 8:
            raise MalformedError("a compact range is at least 8 bytes")
        size = int.from_bytes(data[:8], "big")
        if size > MAX_TREE_SIZE:
            raise MalformedError(f"compact range size {size} exceeds {MAX_TREE_SIZE}")
        want = 8 + HASH_SIZE * size.bit_count()
        if len(data) != want:
            raise MalformedError(f"a compact range of size {size} is {want} bytes, not {len(data)}")
        hashes = [data[i : i + HASH_SIZE] for i in range(8, len(data), HASH_SIZE)]
        return cls(size, hashes)
