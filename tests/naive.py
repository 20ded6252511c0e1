"""A naive reference of RFC 6962 §2.1, written straight from the recursive definitions.

Slow on purpose (no caching, no iteration tricks): the fast code in :mod:`merkle` is compared
against it. Lists ``entries`` are the log entries ``D[n] = d(0) .. d(n-1)`` themselves, not
their hashes.

    MTH({})       = SHA-256()
    MTH({d(0)})   = SHA-256(0x00 || d(0))
    MTH(D[n])     = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   k largest power of two < n

    PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])        if m < k
                  = PATH(m - k, D[k:n]) : MTH(D[0:k])    if m >= k
    PATH(0, {d(0)}) = {}

    PROOF(m, D[n])            = SUBPROOF(m, D[n], true)
    SUBPROOF(m, D[m], true)   = {}
    SUBPROOF(m, D[m], false)  = {MTH(D[m])}
    SUBPROOF(m, D[n], b)      = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])          if m <= k
                              = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])   if m > k
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _largest_power_of_two_below(n: int) -> int:
    """Return the largest power of two strictly smaller than ``n`` (``n > 1``), by doubling."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(entries: Sequence[bytes]) -> bytes:
    """Return MTH(D[n]) (RFC 6962 §2.1)."""
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = _largest_power_of_two_below(n)
    return hashlib.sha256(b"\x01" + mth(entries[:k]) + mth(entries[k:])).digest()


def path(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """Return PATH(m, D[n]), the audit path of entry ``m`` (RFC 6962 §2.1.1); ``0 <= m < n``."""
    n = len(entries)
    if n == 1:
        return []
    k = _largest_power_of_two_below(n)
    if m < k:
        return [*path(m, entries[:k]), mth(entries[k:])]
    return [*path(m - k, entries[k:]), mth(entries[:k])]


def subproof(m: int, entries: Sequence[bytes], b: bool) -> list[bytes]:
    """Return SUBPROOF(m, D[n], b) (RFC 6962 §2.1.2); ``0 < m <= n``."""
    n = len(entries)
    if m == n:
        return [] if b else [mth(entries)]
    k = _largest_power_of_two_below(n)
    if m <= k:
        return [*subproof(m, entries[:k], b), mth(entries[k:])]
    return [*subproof(m - k, entries[k:], False), mth(entries[:k])]


def proof(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """Return PROOF(m, D[n]), the consistency proof (RFC 6962 §2.1.2); ``0 < m <= n``."""
    return subproof(m, entries, True)


def node(level: int, index: int, entries: Sequence[bytes]) -> bytes:
    """Return MTH of the ``2**level`` entries starting at ``index * 2**level``."""
    return mth(entries[index << level : (index + 1) << level])


def leaf(entry: bytes) -> bytes:
    """Return the leaf hash SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def _hash_children(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def rfc9162_verify_inclusion(
    hash_: bytes, leaf_index: int, tree_size: int, inclusion_path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2, step by step as written (any proof length is fed to the loop)."""
    if leaf_index >= tree_size:
        return False
    fn, sn = leaf_index, tree_size - 1
    r = hash_
    for p in inclusion_path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _hash_children(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _hash_children(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def rfc9162_verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2, step by step as written; requires ``0 < first < second``."""
    if not path:
        return False
    consistency_path = list(path)
    if first & (first - 1) == 0:
        consistency_path.insert(0, first_hash)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = consistency_path[0]
    for c in consistency_path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _hash_children(c, fr)
            sr = _hash_children(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0
