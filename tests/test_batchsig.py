"""Batch-root signatures (client.batchsig): tree, paths, message, leaf encoding, attribution.

The tree and paths are compared with the naive RFC 6962 definitions of :mod:`tests.naive`;
leaves are compared with an independent deterministic CBOR encoder (``cbor2``); every part of
a logged batch leaf is tampered with and must fail verification.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from client.batchsig import (
    BATCH_SIGNATURE_CONTEXT,
    MAX_BATCH_SIZE,
    AttributionError,
    BatchError,
    BatchProof,
    batch_root,
    batch_signing_message,
    build_batch,
    encode_batch_leaf,
    parse_batch_proof,
    path_length,
    root_from_path,
    verify_batch_signature,
    verify_leaf_attribution,
)
from server.leaves import Leaf, LeafError, encode_batch_event_leaf, encode_event_leaf, parse_leaf
from tests import naive

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key().public_bytes_raw()
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))).public_key().public_bytes_raw()


def events(n: int) -> list[bytes]:
    return [cbor2.dumps({"jti": f"e{i}", "type": "token-issued"}, canonical=True) for i in range(n)]


def test_message_layout() -> None:
    root = bytes(range(32))
    message = batch_signing_message("as-prod", 1000, root)
    assert message == BATCH_SIGNATURE_CONTEXT + b"\x07as-prod" + struct.pack(">Q", 1000) + root
    assert message.startswith(b"etch/event-batch/v1\x00")
    for bad in ("", "é", "x" * 256):
        with pytest.raises(BatchError):
            batch_signing_message(bad, 1, root)
    for size in (0, MAX_BATCH_SIZE + 1, -1):
        with pytest.raises(BatchError):
            batch_signing_message("as", size, root)
    with pytest.raises(BatchError):
        batch_signing_message("as", 1, bytes(31))


def test_path_lengths_match_the_naive_paths() -> None:
    for size in range(1, 70):
        entries = events(size)
        for index in range(size):
            assert path_length(index, size) == len(naive.path(index, entries))
    assert path_length(0, 1000) == 10
    assert path_length(MAX_BATCH_SIZE - 1, MAX_BATCH_SIZE) == 16


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 300), data=st.data())
def test_build_batch_agrees_with_the_naive_definitions(size: int, data: st.DataObject) -> None:
    entries = events(size)
    signed = build_batch("as", KEY, entries)
    assert signed.root == naive.mth(entries) == batch_root(entries)
    index = data.draw(st.integers(0, size - 1))
    proof = signed.proofs[index]
    assert list(proof.path) == naive.path(index, entries)
    assert (proof.size, proof.index, proof.signature) == (size, index, signed.signature)
    assert root_from_path(entries[index], index, size, proof.path) == signed.root
    assert verify_batch_signature("as", size, signed.root, signed.signature, [PUBLIC]) == PUBLIC


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 64),
    index=st.integers(0, 63),
    path=st.lists(st.binary(min_size=32, max_size=32), max_size=8),
    entry=st.binary(max_size=16),
)
def test_root_from_path_agrees_with_a_naive_verifier(
    size: int, index: int, path: list[bytes], entry: bytes
) -> None:
    """Any (index, size, path): either both refuse the bounds, or they compute the same root."""
    naive_root = _naive_root(entry, index, size, path)
    if naive_root is None:
        with pytest.raises(BatchError):
            root_from_path(entry, index, size, path)
    else:
        assert root_from_path(entry, index, size, path) == naive_root


def _naive_root(entry: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """RFC 6962 PATH recomputed recursively: split at the largest power of two below size."""
    if not 0 <= index < size:
        return None

    def walk(m: int, n: int, rest: list[bytes]) -> tuple[bytes, list[bytes]] | None:
        if n == 1:
            return hashlib.sha256(b"\x00" + entry).digest(), rest
        k = naive._largest_power_of_two_below(n)
        inner = walk(m, k, rest) if m < k else walk(m - k, n - k, rest)
        if inner is None or not inner[1]:
            return None
        node, remaining = inner
        sibling, remaining = remaining[0], remaining[1:]
        pair = node + sibling if m < k else sibling + node
        return hashlib.sha256(b"\x01" + pair).digest(), remaining

    result = walk(index, size, list(path))
    if result is None or result[1]:
        return None
    return result[0]


def test_proof_bounds_are_strict() -> None:
    good = BatchProof(5, 4, (bytes(32),), bytes(64))
    assert good.index == 4
    cases: list[tuple[int, int, tuple[bytes, ...], bytes]] = [
        (0, 0, (), bytes(64)),  # empty batch
        (MAX_BATCH_SIZE + 1, 0, (bytes(32),) * 17, bytes(64)),  # too large
        (5, 5, (bytes(32),), bytes(64)),  # index == size
        (5, -1, (bytes(32),), bytes(64)),
        (5, 4, (), bytes(64)),  # path too short
        (5, 4, (bytes(32),) * 2, bytes(64)),  # path too long
        (5, 4, (bytes(31),), bytes(64)),  # not a hash
        (5, 4, (bytes(32),), bytes(63)),  # short signature
    ]
    for size, index, path, signature in cases:
        with pytest.raises(BatchError):
            BatchProof(size, index, path, signature)
    with pytest.raises(BatchError):
        BatchProof(True, 0, (), bytes(64))  # a boolean is not a size


def _leaf(size: int = 7, index: int = 3) -> tuple[bytes, bytes, BatchProof]:
    entries = events(size)
    signed = build_batch("as-prod", KEY, entries)
    proof = signed.proofs[index]
    entry = encode_batch_leaf("as-prod", entries[index], proof, 1_767_225_600_123)
    return entry, entries[index], proof


def test_leaf_encoding_is_deterministic_cbor_and_parses() -> None:
    entry, event_cbor, proof = _leaf()
    expected = cbor2.dumps(
        {
            "v": 1,
            "batch": {
                "size": proof.size,
                "index": proof.index,
                "path": list(proof.path),
                "signature": proof.signature,
            },
            "event": cbor2.loads(event_cbor),
            "log_time": 1_767_225_600_123,
            "submitter": "as-prod",
        },
        canonical=True,
    )
    assert entry == expected
    assert encode_batch_event_leaf("as-prod", event_cbor, proof, 1_767_225_600_123) == entry
    assert parse_leaf(entry) == Leaf(
        "as-prod", cbor2.loads(event_cbor), 1_767_225_600_123, batch=proof
    )
    assert verify_leaf_attribution(entry, [OTHER, PUBLIC]) == "as-prod"


def test_single_event_batch_and_per_event_leaves_verify() -> None:
    entry, _, proof = _leaf(size=1, index=0)
    assert proof.path == ()
    assert verify_leaf_attribution(entry, [PUBLIC]) == "as-prod"
    event_cbor = events(1)[0]
    signature = KEY.sign(b"etch/event/v1\x00" + event_cbor)
    signed = encode_event_leaf("as-prod", event_cbor, signature, 5)
    assert verify_leaf_attribution(signed, [PUBLIC]) == "as-prod"
    with pytest.raises(AttributionError):
        verify_leaf_attribution(signed, [OTHER])


def _mutations() -> list[tuple[str, Any]]:
    """(name, change to the decoded leaf): each must make attribution fail."""

    def flip(data: bytes, at: int = 0) -> bytes:
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]

    def set_batch(name: str, value: Any) -> Any:
        def change(leaf: dict[str, Any]) -> None:
            leaf["batch"][name] = value

        return change

    def change_event(leaf: dict[str, Any]) -> None:
        leaf["event"]["jti"] = "e4"

    def rename(leaf: dict[str, Any]) -> None:
        leaf["submitter"] = "as-other"

    def flip_signature(leaf: dict[str, Any]) -> None:
        leaf["batch"]["signature"] = flip(leaf["batch"]["signature"], 10)

    def flip_path(leaf: dict[str, Any]) -> None:
        leaf["batch"]["path"][1] = flip(leaf["batch"]["path"][1], 31)

    def swap_path(leaf: dict[str, Any]) -> None:
        leaf["batch"]["path"][0], leaf["batch"]["path"][1] = (
            leaf["batch"]["path"][1],
            leaf["batch"]["path"][0],
        )

    def drop_path(leaf: dict[str, Any]) -> None:
        leaf["batch"]["path"].pop()

    def extra_path(leaf: dict[str, Any]) -> None:
        leaf["batch"]["path"].append(bytes(32))

    def extra_member(leaf: dict[str, Any]) -> None:
        leaf["batch"]["root"] = bytes(32)

    def both(leaf: dict[str, Any]) -> None:
        leaf["signature"] = leaf["batch"]["signature"]

    def version(leaf: dict[str, Any]) -> None:
        leaf["v"] = 2

    return [
        ("event", change_event),
        ("submitter", rename),
        ("signature", flip_signature),
        ("path hash", flip_path),
        ("path order", swap_path),
        ("path too short", drop_path),
        ("path too long", extra_path),
        ("index", set_batch("index", 2)),
        ("index = size", set_batch("index", 7)),
        ("size", set_batch("size", 8)),
        ("size smaller", set_batch("size", 4)),
        ("size as text", set_batch("size", "7")),
        ("short signature", set_batch("signature", bytes(63))),
        ("unknown batch member", extra_member),
        ("signature and batch", both),
        ("version", version),
    ]


@pytest.mark.parametrize(("name", "change"), _mutations(), ids=[m[0] for m in _mutations()])
def test_tampering_with_any_part_fails(name: str, change: Any) -> None:
    entry, _, _ = _leaf()
    leaf = cbor2.loads(entry)
    change(leaf)
    tampered = cbor2.dumps(leaf, canonical=True)
    with pytest.raises(BatchError):
        verify_leaf_attribution(tampered, [PUBLIC])


def test_tampered_bytes_and_wrong_keys_fail() -> None:
    entry, _, _ = _leaf()
    with pytest.raises(AttributionError):
        verify_leaf_attribution(entry, [OTHER])
    with pytest.raises(AttributionError):
        verify_leaf_attribution(entry, [])
    # log_time is the log's claim (covered by the log's tree), not the submitter's: skip it.
    start = entry.index(b"hlog_time") + 9
    unsigned = range(start, start + 9)
    for at in range(0, len(entry), 3):
        if at in unsigned:
            continue
        tampered = entry[:at] + bytes([entry[at] ^ 0x40]) + entry[at + 1 :]
        with pytest.raises(BatchError):
            verify_leaf_attribution(tampered, [PUBLIC])
    # Not deterministic CBOR (an integer with a longer head than needed) is refused too.
    with pytest.raises(BatchError):
        verify_leaf_attribution(b"\xa5\x61v\x18\x01", [PUBLIC])


def test_parse_leaf_refuses_bad_batch_members() -> None:
    entry, _, _ = _leaf()
    leaf = cbor2.loads(entry)
    leaf["batch"]["path"] = leaf["batch"]["path"][:-1]
    with pytest.raises(LeafError):
        parse_leaf(cbor2.dumps(leaf, canonical=True))
    with pytest.raises(BatchError):
        parse_batch_proof({"size": 1, "index": 0, "path": []})
    with pytest.raises(BatchError):
        parse_batch_proof({"size": 1, "index": 0, "path": "", "signature": bytes(64)})


def test_another_batch_signature_does_not_attribute() -> None:
    """A valid signature of another batch, or of another submitter name, does not verify."""
    entries = events(4)
    first = build_batch("as-prod", KEY, entries)
    second = build_batch("as-prod", KEY, events(5))
    proof = first.proofs[2]
    forged = BatchProof(4, 2, proof.path, second.signature)
    entry = encode_batch_leaf("as-prod", entries[2], forged, 1)
    with pytest.raises(AttributionError):
        verify_leaf_attribution(entry, [PUBLIC])
    renamed = encode_batch_leaf("as-prod2", entries[2], proof, 1)
    with pytest.raises(AttributionError):
        verify_leaf_attribution(renamed, [PUBLIC])
