"""Batch-root signatures: one Ed25519 signature attributes every event of a submitter's batch.

Signing each event costs the log one Ed25519 verification per event (about 0.1-0.5 ms, the
dominant cost of ingestion). Instead a submitter may sign a *batch*: it builds the RFC 6962
Merkle tree (RFC 9162 §2.1) over the deterministic CBOR encodings of its events, in order, and
signs its root once. Each event then travels, and is logged, with its index in the batch and
its inclusion path; the log verifies one signature per batch plus a few hashes per event, and
anyone can later check from the logged leaf alone that this submitter signed this event.

Batch tree::

    leaf i     = SHA-256(0x00 || deterministic_cbor(event_i))          (RFC 6962 leaf hash)
    root       = MTH(leaf 0 .. leaf n-1)                               (RFC 6962 §2.1)
    path i     = PATH(i, D[n]), leaf-to-root order                     (RFC 6962 §2.1.1)

Signed message (binary, domain-separated, naming the submitter and the batch size)::

    b"etch/event-batch/v1\\x00"
    || uint8(len(submitter))  || submitter (ASCII, 1-255 bytes, the registered name)
    || uint64_be(size)        (1 <= size <= MAX_BATCH_SIZE)
    || root                   (32 bytes)

signed with the submitter's registered Ed25519 event key (RFC 8032, 64-byte signature). The
context differs from the per-event one (``b"etch/event/v1\\x00"`` followed by a CBOR map, whose
first byte is 0xa0-0xbb), so a batch signature can never be taken for an event signature.

Logged leaf (server.leaves), deterministic CBOR, the ``batch`` member replacing ``signature``::

    {"v": 1,
     "batch": {"path": [h'32 bytes', ...],  exactly the RFC 6962 path length for (index, size)
               "size": n, "index": i,       0 <= i < n <= MAX_BATCH_SIZE
               "signature": h'64 bytes'},   over the message above
     "event": {...}, "log_time": ..., "submitter": "as-prod"}

The root is not stored: it is recomputed from the event, index and path, and only a root the
submitter signed verifies. :func:`verify_leaf_attribution` checks a logged leaf of either kind
(per-event signature or batch proof) against the submitter's public keys, offline.

Errors: :class:`BatchError` (a ``ValueError``) for malformed values, :class:`AttributionError`
(a subclass) when a signature or path does not verify.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.cbor import CBORError, decode_deterministic, encode_deterministic

__all__ = [
    "BATCH_SIGNATURE_CONTEXT",
    "EVENT_SIGNATURE_CONTEXT",
    "MAX_BATCH_SIZE",
    "AttributionError",
    "BatchError",
    "BatchProof",
    "SignedBatch",
    "batch_leaf_hash",
    "batch_paths",
    "batch_root",
    "batch_signing_message",
    "build_batch",
    "check_bounds",
    "encode_batch_leaf",
    "parse_batch_proof",
    "path_length",
    "root_from_path",
    "sign_batch",
    "verify_batch_signature",
    "verify_leaf_attribution",
]

BATCH_SIGNATURE_CONTEXT: Final = b"etch/event-batch/v1\x00"
"""Bytes that start every batch signing message (domain separation)."""
EVENT_SIGNATURE_CONTEXT: Final = b"etch/event/v1\x00"
"""Bytes that start every per-event signing message (server.leaves)."""
MAX_BATCH_SIZE: Final = 1 << 16
"""Largest batch one signature may cover (paths are then at most 16 hashes)."""

_HASH_SIZE: Final = 32
_SIGNATURE_SIZE: Final = 64
_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
_sha256 = hashlib.sha256


class BatchError(ValueError):
    """A batch value is malformed (size, index, path length, hash or signature size, name)."""


class AttributionError(BatchError):
    """A signature or an inclusion path does not verify: the event is not attributed."""


@dataclass(frozen=True, slots=True)
class BatchProof:
    """What attributes one event to its batch: the batch size, its index, path and signature.

    Construction checks the bounds (raises BatchError): ``1 <= size <= MAX_BATCH_SIZE``,
    ``0 <= index < size``, ``path`` exactly :func:`path_length` 32-byte hashes, a 64-byte
    ``signature``.
    """

    size: int
    index: int
    path: tuple[bytes, ...]
    signature: bytes

    def __post_init__(self) -> None:
        check_bounds(self.size, self.index, len(self.path))
        for node in self.path:
            if type(node) is not bytes or len(node) != _HASH_SIZE:
                raise BatchError("every path element is a 32-byte hash")
        if type(self.signature) is not bytes or len(self.signature) != _SIGNATURE_SIZE:
            raise BatchError("a batch signature is 64 bytes")


@dataclass(frozen=True, slots=True)
class SignedBatch:
    """A signed batch: its root, the signature over it, and every event's proof, in order."""

    root: bytes
    signature: bytes
    proofs: tuple[BatchProof, ...]


def check_bounds(size: int, index: int, path_len: int) -> None:
    """Check ``1 <= size <= MAX_BATCH_SIZE``, ``0 <= index < size`` and the exact path length.

    Raises BatchError naming the rule broken.
    """
    if type(size) is not int or not 1 <= size <= MAX_BATCH_SIZE:
        raise BatchError(f"a batch holds 1 to {MAX_BATCH_SIZE} events")
    if type(index) is not int or not 0 <= index < size:
        raise BatchError("the index must lie in [0, size)")
    want = path_length(index, size)
    if path_len != want:
        raise BatchError(f"the path of index {index} in a batch of {size} has {want} hashes")


def path_length(index: int, size: int) -> int:
    """Return the number of hashes in PATH(index, D[size]) (RFC 6962 §2.1.1).

    Requires ``0 <= index < size``. Example: ``path_length(0, 1) == 0``, ``path_length(4, 5)
    == 1``, ``path_length(0, 1000) == 10``.
    """
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def batch_leaf_hash(event_cbor: bytes) -> bytes:
    """Return the batch tree leaf of an event: ``SHA-256(0x00 || event_cbor)`` (RFC 6962)."""
    return _sha256(_LEAF_PREFIX + event_cbor).digest()


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Return the tree's levels bottom-up; an odd last node moves up unhashed (RFC 6962 shape)."""
    levels = [list(leaves)]
    level = levels[0]
    prefix = _NODE_PREFIX
    sha256 = _sha256
    while len(level) > 1:
        upper = [
            sha256(prefix + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            upper.append(level[-1])
        levels.append(upper)
        level = upper
    return levels


def batch_root(event_encodings: Sequence[bytes]) -> bytes:
    """Return the RFC 6962 root of a batch of event encodings. Raises BatchError when empty."""
    if not 1 <= len(event_encodings) <= MAX_BATCH_SIZE:
        raise BatchError(f"a batch holds 1 to {MAX_BATCH_SIZE} events")
    return _levels([batch_leaf_hash(e) for e in event_encodings])[-1][0]


def _paths(levels: list[list[bytes]], size: int) -> list[tuple[bytes, ...]]:
    """Return PATH(i, D[size]) for every i from the tree's levels."""
    paths: list[tuple[bytes, ...]] = []
    for index in range(size):
        path: list[bytes] = []
        position = index
        for level in levels[:-1]:
            sibling = position ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            position >>= 1
        paths.append(tuple(path))
    return paths


def batch_signing_message(submitter: str, size: int, root: bytes) -> bytes:
    """Return the bytes a submitter signs for a batch (see the module docstring).

    Example: ``batch_signing_message("as", 1, bytes(32))`` is
    ``b"etch/event-batch/v1\\x00\\x02as" + (1).to_bytes(8, "big") + bytes(32)``.
    Raises BatchError for a name that is not 1-255 ASCII bytes, a size out of range or a root
    that is not 32 bytes.
    """
    if not submitter or not submitter.isascii() or len(submitter) > 255:
        raise BatchError("the submitter name must be 1 to 255 ASCII characters")
    if type(size) is not int or not 1 <= size <= MAX_BATCH_SIZE:
        raise BatchError(f"a batch holds 1 to {MAX_BATCH_SIZE} events")
    if len(root) != _HASH_SIZE:
        raise BatchError("a batch root is 32 bytes")
    name = submitter.encode("ascii")
    return b"".join(
        (BATCH_SIGNATURE_CONTEXT, bytes((len(name),)), name, struct.pack(">Q", size), root)
    )


def sign_batch(submitter: str, key: Ed25519PrivateKey, root: bytes, size: int) -> bytes:
    """Return the submitter's Ed25519 signature over a batch root. Raises BatchError."""
    return key.sign(batch_signing_message(submitter, size, root))


def batch_paths(event_encodings: Sequence[bytes]) -> tuple[bytes, list[tuple[bytes, ...]]]:
    """Return the batch root and PATH(i, D[n]) of every event, in order (RFC 6962 §2.1.1).

    About two hashes per event in all, against ``log2(n)`` per event to verify paths one by
    one: what the log uses when a request holds a whole batch without paths. Raises
    BatchError for an empty batch or one larger than MAX_BATCH_SIZE.
    """
    size = len(event_encodings)
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise BatchError(f"a batch holds 1 to {MAX_BATCH_SIZE} events")
    levels = _levels([batch_leaf_hash(e) for e in event_encodings])
    return levels[-1][0], _paths(levels, size)


def build_batch(
    submitter: str, key: Ed25519PrivateKey, event_encodings: Sequence[bytes]
) -> SignedBatch:
    """Build the tree over ``event_encodings``, sign its root, and return every event's proof.

    Requires each encoding to be the event's deterministic CBOR (what the log re-encodes).
    Raises BatchError for an empty batch or one larger than MAX_BATCH_SIZE, a bad name.
    """
    root, paths = batch_paths(event_encodings)
    size = len(paths)
    signature = sign_batch(submitter, key, root, size)
    proofs = tuple(BatchProof(size, index, path, signature) for index, path in enumerate(paths))
    return SignedBatch(root, signature, proofs)


def root_from_path(event_cbor: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """Return the batch root the path leads to from ``event_cbor`` at ``index`` (RFC 9162 §2.1.3.2).

    Raises BatchError if the bounds or the exact path length do not hold, or an element is not a
    32-byte hash.
    """
    check_bounds(size, index, len(path))
    for sibling in path:
        if type(sibling) is not bytes or len(sibling) != _HASH_SIZE:
            raise BatchError("every path element is a 32-byte hash")
    # RFC 9162 §2.1.3.2 with its branches resolved in advance: below ``inner`` the side is the
    # index bit; above it the path only holds left siblings (the right edge of the tree).
    inner = (index ^ (size - 1)).bit_length()
    sha256 = _sha256
    prefix = _NODE_PREFIX
    node = sha256(_LEAF_PREFIX + event_cbor).digest()
    position = index
    for sibling in path[:inner]:
        if position & 1:
            node = sha256(prefix + sibling + node).digest()
        else:
            node = sha256(prefix + node + sibling).digest()
        position >>= 1
    for sibling in path[inner:]:
        node = sha256(prefix + sibling + node).digest()
    return node


def verify_batch_signature(
    submitter: str, size: int, root: bytes, signature: bytes, public_keys: Iterable[bytes]
) -> bytes:
    """Return the raw public key (of ``public_keys``) whose signature over the batch verifies.

    Raises AttributionError when none does, BatchError for malformed values.
    """
    message = batch_signing_message(submitter, size, root)
    if len(signature) != _SIGNATURE_SIZE:
        raise BatchError("a batch signature is 64 bytes")
    for raw in public_keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            continue
        return raw
    raise AttributionError("the batch signature does not verify with any of the given keys")


def encode_batch_leaf(submitter: str, event_cbor: bytes, proof: BatchProof, log_time: int) -> bytes:
    """Return the logged leaf of a batch-signed event (the map of the module docstring).

    Equal to ``encode_deterministic({"v": 1, "batch": {...}, "event": event, "log_time": ...,
    "submitter": ...})``, built around ``event_cbor`` without re-encoding it. Requires
    ``event_cbor`` to be the deterministic encoding of a map and ``0 <= log_time < 2**64``.
    """
    path = proof.path
    return b"".join(
        (
            _LEAF_HEAD,
            bytes((0x80 + len(path),)),  # at most 16 hashes: a one-byte array head
            *[_HASH_HEAD + node for node in path],
            _SIZE_KEY,
            _uint(proof.size),
            _INDEX_KEY,
            _uint(proof.index),
            _SIGNATURE_KEY,
            _SIGNATURE_HEAD,
            proof.signature,
            _EVENT_KEY,
            event_cbor,
            _LOG_TIME_KEY,
            _uint(log_time),
            _SUBMITTER_KEY,
            _text(submitter),
        )
    )


def _uint(value: int) -> bytes:
    """Return the deterministic CBOR of an unsigned integer below 2**64 (RFC 8949 §4.2.1)."""
    if value < 24:
        return bytes((value,))
    if value < 0x100:
        return bytes((0x18, value))
    if value < 0x10000:
        return b"\x19" + value.to_bytes(2, "big")
    if value < 0x100000000:
        return b"\x1a" + value.to_bytes(4, "big")
    return b"\x1b" + value.to_bytes(8, "big")


@functools.lru_cache(maxsize=1024)
def _text(value: str) -> bytes:
    """Return the deterministic CBOR of a text string (few distinct submitter names)."""
    return encode_deterministic(value)


# Deterministic CBOR sorts map keys by their encoded bytes (shorter first, then bytewise):
# leaf: v, batch, event, log_time, submitter; batch: path, size, index, signature.
_LEAF_HEAD: Final = (
    b"\xa5"
    + encode_deterministic("v")
    + encode_deterministic(1)
    + encode_deterministic("batch")
    + b"\xa4"
    + encode_deterministic("path")
)
_EVENT_KEY: Final = encode_deterministic("event")
_LOG_TIME_KEY: Final = encode_deterministic("log_time")
_SUBMITTER_KEY: Final = encode_deterministic("submitter")
_SIZE_KEY: Final = encode_deterministic("size")
_INDEX_KEY: Final = encode_deterministic("index")
_SIGNATURE_KEY: Final = encode_deterministic("signature")
_HASH_HEAD: Final = b"\x58\x20"
_SIGNATURE_HEAD: Final = b"\x58\x40"
_SIGNED_LEAF_KEYS: Final = frozenset({"v", "submitter", "event", "signature", "log_time"})
_BATCH_LEAF_KEYS: Final = frozenset({"v", "submitter", "event", "batch", "log_time"})
_BATCH_KEYS: Final = frozenset({"size", "index", "path", "signature"})


def parse_batch_proof(value: object) -> BatchProof:
    """Return the :class:`BatchProof` of a decoded leaf's ``batch`` member.

    Strict: a map of exactly ``size``, ``index``, ``path`` and ``signature`` with the types
    and bounds of :class:`BatchProof`. Raises BatchError.
    """
    if not isinstance(value, dict) or frozenset(value) != _BATCH_KEYS:
        raise BatchError("batch must be a map of exactly size, index, path and signature")
    path = value["path"]
    if not isinstance(path, list):
        raise BatchError("the batch path must be a list of hashes")
    size, index, signature = value["size"], value["index"], value["signature"]
    if type(size) is not int or type(index) is not int or type(signature) is not bytes:
        raise BatchError("batch size and index are integers, its signature bytes")
    return BatchProof(size, index, tuple(path), signature)


def verify_leaf_attribution(entry: bytes, public_keys: Iterable[bytes]) -> str:
    """Check offline that the submitter named in a logged event leaf signed its event.

    ``entry`` is the exact leaf bytes (e.g. from ``GET /v1/entries/<index>`` or an entry
    bundle); ``public_keys`` are the raw 32-byte Ed25519 event keys registered to that
    submitter. A per-event leaf (``signature``) is checked against ``b"etch/event/v1\\x00" ||
    cbor(event)``; a batch leaf (``batch``) by recomputing the batch root from the event, index
    and path and checking the signature over the batch message naming the leaf's submitter and
    batch size. Returns the submitter's name. ``log_time`` is the log's statement, not the
    submitter's: it is covered by the log's tree (the leaf hash), not by this signature.

    Raises BatchError for bytes that are not a strict event leaf, AttributionError when the
    signature or the path does not verify. (SET leaves carry a JWS instead: not handled here.)
    """
    try:
        leaf = decode_deterministic(entry)
    except CBORError as exc:
        raise BatchError(f"not a deterministic CBOR leaf: {exc}") from None
    if not isinstance(leaf, dict) or frozenset(leaf) not in (_SIGNED_LEAF_KEYS, _BATCH_LEAF_KEYS):
        raise BatchError("not an event leaf")
    version, submitter, event, log_time = (
        leaf["v"],
        leaf["submitter"],
        leaf["event"],
        leaf["log_time"],
    )
    if type(version) is not int or version != 1:
        raise BatchError("not a version 1 leaf")
    if type(submitter) is not str or not isinstance(event, dict):
        raise BatchError("the leaf has no valid submitter or event")
    if type(log_time) is not int or log_time < 0:
        raise BatchError("the leaf has no valid log time")
    event_cbor = encode_deterministic(event)
    keys = list(public_keys)
    if "signature" in leaf:
        signature = leaf["signature"]
        if type(signature) is not bytes or len(signature) != _SIGNATURE_SIZE:
            raise BatchError("an event signature is 64 bytes")
        message = EVENT_SIGNATURE_CONTEXT + event_cbor
        for raw in keys:
            try:
                Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
            except (InvalidSignature, ValueError):
                continue
            return submitter
        raise AttributionError("the event signature does not verify with any of the given keys")
    proof = parse_batch_proof(leaf["batch"])
    root = root_from_path(event_cbor, proof.index, proof.size, proof.path)
    verify_batch_signature(submitter, proof.size, root, proof.signature, keys)
    return submitter
