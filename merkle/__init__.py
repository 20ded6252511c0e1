"""Etch's verifiable core: RFC 6962 Merkle trees and the C2SP transparency-log formats.

Pure functions and values only: no I/O, no clock, no asyncio. Imports only the standard library
and ``cryptography``.
"""

from merkle.errors import (
    InconsistencyError,
    MalformedError,
    MerkleError,
    NoteError,
    PolicyError,
    ProofError,
    SignatureError,
    UnknownKeyError,
    UnverifiedNoteError,
)
from merkle.hashing import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "InconsistencyError",
    "MalformedError",
    "MerkleError",
    "NoteError",
    "PolicyError",
    "ProofError",
    "SignatureError",
    "UnknownKeyError",
    "UnverifiedNoteError",
    "leaf_hash",
    "node_hash",
]
