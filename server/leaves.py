"""The leaves of the OAuth log: what exactly is stored (and hashed) for each accepted event.

Every leaf is the RFC 8949 §4.2.1 deterministic CBOR encoding of a map (ARCHITECTURE.md
"Events"), so anyone can re-encode and check it. Two shapes, told apart by their keys:

Event leaf, from ``POST /v1/events`` (one per event of ``POST /v1/events/batch``)::

    {"v": 1,                      leaf format version
     "submitter": "as-prod",      the registered submitter that sent it
     "event": {...},              the event exactly as validated (server.events)
     "signature": h'…64 bytes…',  the submitter's Ed25519 signature, see below
     "log_time": 1767225600123}   the log's clock when it accepted the event, POSIX ms

SET leaf, from ``POST /v1/sets`` (RFC 8935 push delivery)::

    {"v": 1, "submitter": "as-prod",
     "set": "eyJhbGciOi…",        the compact JWS exactly as received (verifiable later with
                                  the OAuth server's published keys)
     "event": {...},              its decoded claims (the SET payload)
     "log_time": 1767225600123}

The event signature is Ed25519 (RFC 8032) over :data:`EVENT_SIGNATURE_CONTEXT` followed by the
deterministic CBOR encoding of the event map alone::

    b"etch/event/v1\\x00" || deterministic_cbor(event)

so the signature, and with it the event's attribution to its submitter, can be checked from the
leaf alone with the submitter's public key.

Batch event leaf, from ``POST /v1/events/signed-batch`` (:mod:`client.batchsig`): the submitter
signed the RFC 6962 root of a batch of events once; the leaf carries what attributes this one
event to that signature instead of ``signature``::

    {"v": 1,
     "batch": {"path": [h'…32 bytes…', ...], "size": 1000, "index": 17,
               "signature": h'…64 bytes…'},   Ed25519 over the batch message
     "event": {...}, "log_time": 1767225600123, "submitter": "as-prod"}

:func:`client.batchsig.verify_leaf_attribution` checks either kind offline.

Errors: :class:`LeafError` (a ``ValueError``) for bytes that are not a leaf of this format.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from client.batchsig import BatchError, BatchProof, encode_batch_leaf, parse_batch_proof
from server.codec import (
    DEFAULT_LIMITS,
    CodecError,
    Limits,
    Value,
    decode_deterministic,
    encode_deterministic,
)

__all__ = [
    "EVENT_SIGNATURE_CONTEXT",
    "LEAF_VERSION",
    "Leaf",
    "LeafError",
    "encode_batch_event_leaf",
    "encode_event_leaf",
    "encode_set_leaf",
    "event_signing_message",
    "parse_leaf",
]

LEAF_VERSION: Final = 1
"""Value of the ``v`` member of every leaf this code writes."""

EVENT_SIGNATURE_CONTEXT: Final = b"etch/event/v1\x00"
"""Bytes signed before the event's deterministic CBOR encoding (domain separation)."""

SIGNATURE_SIZE: Final = 64
"""Length of an Ed25519 signature (RFC 8032 §5.1.6)."""

_EVENT_KEYS: Final = frozenset({"v", "submitter", "event", "signature", "log_time"})
_SET_KEYS: Final = frozenset({"v", "submitter", "set", "event", "log_time"})
_BATCH_KEYS: Final = frozenset({"v", "submitter", "batch", "event", "log_time"})

# Deterministic CBOR orders map keys by their encoded bytes: for text keys, shorter first, then
# bytewise. Event leaf: v, event, log_time, signature, submitter. SET leaf: v, set, event,
# log_time, submitter. The leaf is built by concatenating these fixed parts with the encoded
# event, which then appears in the leaf exactly as it was signed.
_MAP5: Final = b"\xa5"
_V: Final = encode_deterministic("v") + encode_deterministic(LEAF_VERSION)
_EVENT: Final = encode_deterministic("event")
_LOG_TIME: Final = encode_deterministic("log_time")
_SIGNATURE: Final = encode_deterministic("signature")
_SUBMITTER: Final = encode_deterministic("submitter")
_SET: Final = encode_deterministic("set")
_SIGNATURE_HEAD: Final = b"\x58\x40"
"""CBOR head of a 64-byte byte string (major type 2, one-byte length 64)."""
_encoded_name: Final = functools.lru_cache(maxsize=1024)(encode_deterministic)
"""Deterministic encoding of a submitter name (few distinct names, encoded once each)."""


class LeafError(ValueError):
    """Bytes are not a leaf of this format, or a leaf would exceed the entry size limit."""


@dataclass(frozen=True, slots=True)
class Leaf:
    """A decoded leaf: an event leaf has ``signature``, a SET leaf has ``set`` (the JWS), a
    batch event leaf has ``batch`` (its proof of membership in a signed batch)."""

    submitter: str
    event: dict[str, Value]
    log_time: int
    signature: bytes | None = None
    set: str | None = None
    batch: BatchProof | None = None


def event_signing_message(event_bytes: bytes) -> bytes:
    """Return what a submitter signs for an event, given the event's deterministic encoding.

    Example: for the event ``{}`` (encoded ``a0``) it is ``b"etch/event/v1\\x00\\xa0"``.
    """
    return EVENT_SIGNATURE_CONTEXT + event_bytes


def _check_size(data: bytes, limits: Limits) -> bytes:
    if len(data) > limits.max_entry_bytes:
        raise LeafError(
            f"the leaf would be {len(data)} bytes; entries are at most {limits.max_entry_bytes}"
        )
    return data


def encode_event_leaf(
    submitter: str,
    event_bytes: bytes,
    signature: bytes,
    log_time: int,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Return the event leaf for an already encoded event (``deterministic_cbor(event)``).

    Equal to ``encode_deterministic({"v": 1, "submitter": ..., "event": event, "signature":
    ..., "log_time": ...})``, built without re-encoding the event. Requires ``event_bytes`` to
    be the deterministic encoding of a map and ``0 <= log_time < 2**64``.
    Raises LeafError when the signature is not 64 bytes or the leaf exceeds
    ``limits.max_entry_bytes`` (C2SP tlog-tiles bundles hold entries of at most 65,535 bytes).
    """
    data = b"".join(
        (
            _MAP5,
            _V,
            _EVENT,
            event_bytes,
            _LOG_TIME,
            encode_deterministic(log_time),
            _SIGNATURE,
            _SIGNATURE_HEAD + signature if len(signature) == SIGNATURE_SIZE else b"",
            _SUBMITTER,
            _encoded_name(submitter),
        )
    )
    if len(signature) != SIGNATURE_SIZE:
        raise LeafError(f"an event signature is {SIGNATURE_SIZE} bytes")
    return _check_size(data, limits)


def encode_batch_event_leaf(
    submitter: str,
    event_bytes: bytes,
    proof: BatchProof,
    log_time: int,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Return the batch event leaf for an already encoded event and its batch proof.

    Equal to ``encode_deterministic({"v": 1, "batch": {"path", "size", "index", "signature"},
    "event": ..., "log_time": ..., "submitter": ...})`` (:func:`client.batchsig.
    encode_batch_leaf`). Requires ``event_bytes`` to be the deterministic encoding of a map and
    ``0 <= log_time < 2**64``. Raises LeafError when the leaf exceeds ``limits.max_entry_bytes``.
    """
    return _check_size(encode_batch_leaf(submitter, event_bytes, proof, log_time), limits)


def encode_set_leaf(
    submitter: str,
    set_text: str,
    claims: Mapping[str, Value],
    log_time: int,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Return the SET leaf for a verified compact JWS and its decoded claims.

    Raises LeafError when the leaf exceeds ``limits.max_entry_bytes``; CodecError if the claims
    hold a value deterministic CBOR cannot encode.
    """
    data = encode_deterministic(
        {
            "v": LEAF_VERSION,
            "submitter": submitter,
            "set": set_text,
            "event": claims,
            "log_time": log_time,
        }
    )
    return _check_size(data, limits)


def parse_leaf(data: bytes) -> Leaf:
    """Decode a leaf written by this log (strict deterministic CBOR) into a :class:`Leaf`.

    Raises LeafError for anything else: not deterministic CBOR, not a map of exactly the keys
    of one of the three shapes, a batch member breaking the bounds of
    :class:`client.batchsig.BatchProof`, a version other than 1, or members of the wrong type.
    """
    try:
        value = decode_deterministic(data)
    except CodecError as exc:
        raise LeafError(f"not a leaf: {exc.detail}") from None
    if not isinstance(value, dict):
        raise LeafError("not a leaf: not a map")
    keys = frozenset(value)
    if keys not in (_EVENT_KEYS, _SET_KEYS, _BATCH_KEYS):
        raise LeafError("not a leaf: unexpected members")
    if value["v"] != LEAF_VERSION or type(value["v"]) is not int:
        raise LeafError("unknown leaf version")
    submitter, event, log_time = value["submitter"], value["event"], value["log_time"]
    if not isinstance(submitter, str) or not isinstance(event, dict):
        raise LeafError("not a leaf: bad submitter or event")
    if type(log_time) is not int or log_time < 0:
        raise LeafError("not a leaf: bad log_time")
    if keys == _EVENT_KEYS:
        signature = value["signature"]
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise LeafError("not a leaf: bad signature")
        return Leaf(submitter, event, log_time, signature=signature)
    if keys == _BATCH_KEYS:
        try:
            proof = parse_batch_proof(value["batch"])
        except BatchError as exc:
            raise LeafError(f"not a leaf: {exc}") from None
        return Leaf(submitter, event, log_time, batch=proof)
    set_text = value["set"]
    if not isinstance(set_text, str):
        raise LeafError("not a leaf: bad set")
    return Leaf(submitter, event, log_time, set=set_text)
