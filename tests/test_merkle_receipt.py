"""Tests of merkle.receipt (C2SP tlog-proof).

The receipt header lines are those of the example in c2sp.org/tlog-proof (header, extra and
index lines and proof hashes); the checkpoint of that example has elided signatures, so the
signed parts use real keys. Inclusion proofs come from the naive RFC 6962 reference in
tests/naive.py. Strictness tables cover every line; mutation tables flip every bit of the proof
and change the index, entry and checkpoint.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.cosignature import CosignatureSigner
from merkle.errors import (
    MalformedError,
    MerkleError,
    PolicyError,
    ProofError,
    SignatureError,
    UnknownKeyError,
)
from merkle.note import Ed25519Signer, add_signatures, sign_note
from merkle.policy import Policy, parse_policy
from merkle.receipt import (
    MAX_PROOF_HASHES,
    RECEIPT_HEADER,
    Receipt,
    format_receipt,
    parse_receipt,
    verify_receipt,
)
from tests.naive import mth, path

ORIGIN = "log.example.com/oauth/2026"
LOG = Ed25519Signer(ORIGIN, b"\x01" * 32)
W1 = CosignatureSigner("w1.example", b"\x02" * 32)
W2 = CosignatureSigner("w2.example", b"\x03" * 32)
ENTRIES = [f"event {i}".encode() for i in range(13)]
POLICY_TEXT = f"""\
log {LOG.vkey}
witness a {W1.vkey}
witness b {W2.vkey}
group both all a b
quorum both
"""

# c2sp.org/tlog-proof, the lines of the example before its checkpoint.
SPEC_HEAD = """\
c2sp.org/tlog-proof@v1
extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ
index 73894
gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=
B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=
EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=
RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=
AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=

"""


def _signed_checkpoint(entries: list[bytes], cosigners: list[CosignatureSigner]) -> bytes:
    text = format_checkpoint(Checkpoint(ORIGIN, len(entries), mth(entries)))
    return add_signatures(sign_note(text, [LOG]), [c.signer_at(1_700_000_000) for c in cosigners])


CHECKPOINT = _signed_checkpoint(ENTRIES, [W1, W2])


def _receipt(index: int, extra: bytes | None = None) -> Receipt:
    return Receipt(index, tuple(path(index, ENTRIES)), CHECKPOINT, extra)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(POLICY_TEXT)


# --------------------------------------------------------------------------- format


def test_spec_example_header_lines() -> None:
    data = SPEC_HEAD.encode() + CHECKPOINT
    receipt = parse_receipt(data)
    assert receipt.index == 73894
    assert receipt.extra == base64.b64decode("YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ")
    assert receipt.proof[0] == base64.b64decode("gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=")
    assert len(receipt.proof) == 5
    assert receipt.checkpoint == CHECKPOINT
    assert format_receipt(receipt) == data


def test_minimal_receipt() -> None:
    receipt = Receipt(0, (), CHECKPOINT)
    data = format_receipt(receipt)
    assert data == b"c2sp.org/tlog-proof@v1\nindex 0\n\n" + CHECKPOINT
    assert parse_receipt(data) == receipt


def test_empty_extra_differs_from_absent() -> None:
    with_empty = format_receipt(Receipt(0, (), CHECKPOINT, b""))
    assert with_empty.startswith(b"c2sp.org/tlog-proof@v1\nextra \nindex 0\n")
    assert parse_receipt(with_empty).extra == b""


def _with(head: str) -> bytes:
    return head.encode() + CHECKPOINT


HASH = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "header"),
        (_with("c2sp.org/tlog-proof@v2\nindex 0\n\n"), "start"),
        (_with("c2sp.org/tlog-proof@v1 \nindex 0\n\n"), "start"),
        (_with("C2SP.org/tlog-proof@v1\nindex 0\n\n"), "start"),
        (_with("c2sp.org/tlog-proof@v1\r\nindex 0\n\n"), "start"),
        (_with(f"{RECEIPT_HEADER}\n\n"), "index"),
        (_with(f"{RECEIPT_HEADER}\nindex\n\n"), "index"),
        (_with(f"{RECEIPT_HEADER}\nindex 0"), "forbidden|tree size|index"),
        (_with(f"{RECEIPT_HEADER}\nindex +5\n\n"), "canonical"),
        (_with(f"{RECEIPT_HEADER}\nindex  5\n\n"), "canonical"),
        (_with(f"{RECEIPT_HEADER}\nindex 05\n\n"), "canonical"),
        (_with(f"{RECEIPT_HEADER}\nindex 5_000\n\n"), "canonical"),
        (_with(f"{RECEIPT_HEADER}\nindex \u0665\n\n"), "ASCII"),
        (_with(f"{RECEIPT_HEADER}\nindex {2**63 - 1}\n\n"), "larger"),
        (_with(f"{RECEIPT_HEADER}\nindex 1 \n\n"), "canonical"),
        (_with(f"{RECEIPT_HEADER}\nextra QQ\nindex 0\n\n"), "base64"),
        (_with(f"{RECEIPT_HEADER}\nextra QR==\nindex 0\n\n"), "non-canonical"),
        (_with(f"{RECEIPT_HEADER}\nextra -_==\nindex 0\n\n"), "base64"),
        (_with(f"{RECEIPT_HEADER}\nextra\nindex 0\n\n"), "index"),
        (_with(f"{RECEIPT_HEADER}\nindex 0\nextra QQ==\n\n"), "base64|proof"),
        (_with(f"{RECEIPT_HEADER}\nextra QQ==\nextra QQ==\nindex 0\n\n"), "index"),
        (_with(f"{RECEIPT_HEADER}\nindex 0\n{HASH[:-1]}\n\n"), "base64"),
        (_with(f"{RECEIPT_HEADER}\nindex 0\n{HASH} \n\n"), "base64"),
        (_with(f"{RECEIPT_HEADER}\nindex 0\n{base64.b64encode(bytes(31)).decode()}\n\n"), "31"),
        (_with(f"{RECEIPT_HEADER}\nindex 0\n{base64.b64encode(bytes(33)).decode()}\n\n"), "33"),
        (_with(f"{RECEIPT_HEADER}\nindex 0\n" + f"{HASH}\n" * 64 + "\n"), "more than 63"),
        (f"{RECEIPT_HEADER}\nindex 0\n{HASH}\n".encode(), "empty separator"),
        (f"{RECEIPT_HEADER}\nindex 0\n\n".encode(), "note|blank line"),
        (f"{RECEIPT_HEADER}\nindex 0\n\nnot a note\n".encode(), "blank line"),
        (_with(f"{RECEIPT_HEADER}\nindex 0\n\n\n"), "origin|forbidden|empty"),
        (f"{RECEIPT_HEADER}\nindex 0\n\n".encode() + CHECKPOINT[:-1], "newline"),
    ],
)
def test_receipt_strictness(data: bytes, message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        parse_receipt(data)


def test_receipt_with_malformed_checkpoint_text() -> None:
    bad = sign_note(f"{ORIGIN}\n05\n{HASH}\n", [LOG])
    with pytest.raises(MalformedError, match="tree size"):
        parse_receipt(f"{RECEIPT_HEADER}\nindex 0\n\n".encode() + bad)


def test_every_truncation_rejected() -> None:
    # One signature line: cutting a note after one of several lines leaves a valid note.
    single = _signed_checkpoint(ENTRIES, [])
    data = format_receipt(Receipt(5, tuple(path(5, ENTRIES)), single, b"extra data"))
    for end in range(len(data)):
        with pytest.raises(MalformedError):
            parse_receipt(data[:end])


def test_receipt_values_are_validated() -> None:
    with pytest.raises(MalformedError):
        Receipt(-1, (), CHECKPOINT)
    with pytest.raises(MalformedError):
        Receipt(0, (bytes(31),), CHECKPOINT)
    with pytest.raises(MalformedError):
        Receipt(0, (bytes(32),) * (MAX_PROOF_HASHES + 1), CHECKPOINT)
    with pytest.raises(MalformedError):
        Receipt(0, (), b"")
    with pytest.raises(MalformedError):
        Receipt(0, (), CHECKPOINT + b"trailing\n")


_receipts = st.builds(
    Receipt,
    st.integers(0, 2**63 - 2),
    st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PROOF_HASHES).map(tuple),
    st.just(CHECKPOINT),
    st.none() | st.binary(max_size=64),
)


@settings(max_examples=150, deadline=None)
@given(_receipts)
def test_parse_inverts_format(receipt: Receipt) -> None:
    assert parse_receipt(format_receipt(receipt)) == receipt


# --------------------------------------------------------------------------- verification


def test_verify_every_index(policy: Policy) -> None:
    for index, entry in enumerate(ENTRIES):
        receipt = parse_receipt(format_receipt(_receipt(index)))
        checkpoint = verify_receipt(receipt, entry, policy)
        assert (checkpoint.origin, checkpoint.tree_size) == (ORIGIN, len(ENTRIES))
        assert checkpoint.root_hash == mth(ENTRIES)


def test_size_one_tree(policy: Policy) -> None:
    checkpoint = _signed_checkpoint(ENTRIES[:1], [W1, W2])
    assert verify_receipt(Receipt(0, (), checkpoint), ENTRIES[0], policy).tree_size == 1


def test_extra_is_not_authenticated(policy: Policy) -> None:
    receipt = _receipt(3, b"anything")
    assert verify_receipt(receipt, ENTRIES[3], policy).tree_size == len(ENTRIES)


def test_wrong_entry_or_index_fails(policy: Policy) -> None:
    receipt = _receipt(4)
    with pytest.raises(ProofError):
        verify_receipt(receipt, ENTRIES[5], policy)
    with pytest.raises(ProofError):
        verify_receipt(receipt, ENTRIES[4] + b"x", policy)
    for index in (3, 5, 12):
        with pytest.raises(ProofError):
            verify_receipt(Receipt(index, receipt.proof, CHECKPOINT), ENTRIES[4], policy)
    with pytest.raises(ProofError, match="not below"):
        verify_receipt(Receipt(len(ENTRIES), (), CHECKPOINT), ENTRIES[0], policy)


def test_flipping_any_proof_bit_fails() -> None:
    # Quorum none: one signature check per attempt keeps this table fast.
    policy = parse_policy(f"log {LOG.vkey}\nquorum none\n")
    receipt = _receipt(6)
    for position, node in enumerate(receipt.proof):
        for bit in range(256):
            flipped = bytearray(node)
            flipped[bit // 8] ^= 1 << (bit % 8)
            proof = (*receipt.proof[:position], bytes(flipped), *receipt.proof[position + 1 :])
            with pytest.raises(ProofError):
                verify_receipt(Receipt(6, proof, CHECKPOINT), ENTRIES[6], policy)


def test_dropped_or_added_hash_fails(policy: Policy) -> None:
    proof = _receipt(6).proof
    for bad in (proof[:-1], proof[1:], (*proof, proof[0]), (proof[0], *proof)):
        with pytest.raises(ProofError):
            verify_receipt(Receipt(6, bad, CHECKPOINT), ENTRIES[6], policy)


def test_quorum_and_signatures_checked_before_inclusion(policy: Policy) -> None:
    only_w1 = _signed_checkpoint(ENTRIES, [W1])
    with pytest.raises(PolicyError):
        verify_receipt(Receipt(2, tuple(path(2, ENTRIES)), only_w1), ENTRIES[2], policy)
    # A receipt whose checkpoint fails is refused even when its proof is wrong too.
    with pytest.raises(PolicyError):
        verify_receipt(Receipt(2, (), only_w1), ENTRIES[2], policy)
    forged = CHECKPOINT.replace(b"\n13\n", b"\n14\n", 1)
    with pytest.raises(SignatureError):
        verify_receipt(Receipt(2, tuple(path(2, ENTRIES)), forged), ENTRIES[2], policy)
    other = Ed25519Signer("other.example/log", b"\x01" * 32)
    text = format_checkpoint(Checkpoint(other.name, len(ENTRIES), mth(ENTRIES)))
    with pytest.raises(UnknownKeyError):
        verify_receipt(Receipt(2, tuple(path(2, ENTRIES)), sign_note(text, [other])),
                       ENTRIES[2], policy)


def test_flipping_any_checkpoint_bit_fails(policy: Policy) -> None:
    receipt = format_receipt(_receipt(7))
    start = receipt.index(b"\n\n") + 2
    for bit in range(start * 8, len(receipt) * 8, 3):  # every third bit keeps the test fast
        flipped = bytearray(receipt)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(MerkleError):
            verify_receipt(parse_receipt(bytes(flipped)), ENTRIES[7], policy)
