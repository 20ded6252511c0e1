"""Tests of merkle.cosignature (C2SP tlog-cosignature, Ed25519 flavour, type 0x04).

Known answers:

* c2sp.org/tlog-cosignature: the example checkpoint, its example cosignature line (whose
  timestamp 1679315147 is the one of the example signed message) and that signed message;
* transparency-dev/formats note/note_cosigv1_test.go: the cosignature of TestCoSigV1Timestamp
  (timestamp 1727964367), its "wrong type of signature" (a plain Ed25519 signature), and the
  public type-0x04 vkey of the witness remora.n621.de.

The example cosignature's public key is not published, so its signature cannot be verified;
signatures are checked by round trips and mutation instead.
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.cosignature import (
    COSIGNATURE_SIZE,
    MAX_TIMESTAMP,
    CosignatureSigner,
    CosignatureVerifier,
    cosignature_message,
    cosignature_timestamp,
)
from merkle.errors import MalformedError, SignatureError, UnverifiedNoteError
from merkle.note import (
    KEY_TYPE_COSIGNATURE,
    Ed25519Signer,
    NoteSignature,
    add_signatures,
    key_id,
    merge_signatures,
    open_note,
    parse_note,
    parse_signature_lines,
    sign_note,
)

SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
SPEC_COSIGNATURE_LINE = (
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b"
    "2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
SPEC_MESSAGE = (
    b"cosignature/v1\n"
    b"time 1679315147\n"
    b"example.com/behind-the-sofa\n"
    b"20852163\n"
    b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
# transparency-dev/formats note/note_cosigv1_test.go, TestCoSigV1Timestamp.
FORMATS_COSIGNATURE = (
    "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJ"
    "XORmnFBOBA=="
)
FORMATS_PLAIN_SIGNATURE = (
    "eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1hPb/W/4xkNQY="
)
# transparency-dev/formats note/note_cosigv1_test.go, TestCoSigV1NewVerifier.
REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
FORMATS_TYPE1_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"

SEED = b"\x42" * 32
NAME = "witness.example/w1"


def _signature(encoded: str) -> NoteSignature:
    raw = base64.b64decode(encoded)
    return NoteSignature("w", raw[:4], raw[4:])


@pytest.fixture(scope="module")
def cosigner() -> CosignatureSigner:
    return CosignatureSigner(NAME, SEED)


# --------------------------------------------------------------------------- known answers


def test_spec_message() -> None:
    assert cosignature_message(SPEC_CHECKPOINT, 1679315147) == SPEC_MESSAGE


def test_spec_cosignature_line() -> None:
    (signature,) = parse_signature_lines(SPEC_COSIGNATURE_LINE.encode())
    assert signature.name == "witness.example.com/w1"
    assert len(signature.signature) == COSIGNATURE_SIZE
    assert cosignature_timestamp(signature) == 1679315147
    # The whole example note, log signature included, parses as a signed checkpoint.
    note = parse_note(
        (
            SPEC_CHECKPOINT
            + "\n— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4UR"
            "YN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
            + SPEC_COSIGNATURE_LINE
        ).encode()
    )
    assert note.text == SPEC_CHECKPOINT
    assert note.signatures[1] == signature


def test_formats_timestamp_vectors() -> None:
    assert cosignature_timestamp(_signature(FORMATS_COSIGNATURE)) == 1727964367
    with pytest.raises(MalformedError, match="expected 72"):
        cosignature_timestamp(_signature(FORMATS_PLAIN_SIGNATURE))


def test_public_witness_vkey() -> None:
    verifier = CosignatureVerifier.from_vkey(REMORA_VKEY)
    assert verifier.name == "remora.n621.de"
    assert verifier.key_id == bytes.fromhex("da77ade7")
    assert verifier.vkey == REMORA_VKEY


def test_type_01_vkey_is_not_a_cosigner_key() -> None:
    with pytest.raises(MalformedError, match="expected 0x04"):
        CosignatureVerifier.from_vkey(FORMATS_TYPE1_VKEY)


def test_key_id_uses_type_04(cosigner: CosignatureSigner) -> None:
    public = cosigner.verifier().public_key
    assert cosigner.key_id == key_id(NAME, KEY_TYPE_COSIGNATURE, public)
    assert cosigner.key_id != Ed25519Signer(NAME, SEED).key_id
    name, hex_id, material = cosigner.vkey.split("+", 2)
    assert (name, hex_id) == (NAME, cosigner.key_id.hex())
    assert base64.b64decode(material) == bytes((KEY_TYPE_COSIGNATURE,)) + public


# --------------------------------------------------------------------------- sign and verify


def test_sign_at_and_verify(cosigner: CosignatureSigner) -> None:
    signature = cosigner.sign_at(SPEC_CHECKPOINT, 1679315147)
    assert signature.name == NAME
    assert signature.key_id == cosigner.key_id
    assert len(signature.signature) == COSIGNATURE_SIZE
    assert signature.signature[:8] == (1679315147).to_bytes(8, "big")
    assert cosignature_timestamp(signature) == 1679315147
    verifier = cosigner.verifier()
    assert verifier.verify(SPEC_CHECKPOINT.encode(), signature.signature)
    # The Ed25519 part signs exactly the cosignature/v1 message.
    Ed25519PrivateKey.from_private_bytes(SEED).public_key().verify(
        signature.signature[8:], SPEC_MESSAGE
    )


def test_cosign_a_signed_checkpoint(cosigner: CosignatureSigner) -> None:
    log = Ed25519Signer("example.com/behind-the-sofa", b"\x01" * 32)
    signed = sign_note(SPEC_CHECKPOINT, [log])
    cosigned = add_signatures(signed, [cosigner.signer_at(1_700_000_000)])
    _, verified = open_note(cosigned, [log.verifier(), cosigner.verifier()])
    assert [s.name for s in verified] == [log.name, NAME]
    assert cosignature_timestamp(verified[1]) == 1_700_000_000
    # The same line, made with sign_at and merged, gives the same note (Ed25519 is deterministic).
    merged = merge_signatures(signed, [cosigner.sign_at(SPEC_CHECKPOINT, 1_700_000_000)])
    assert merged == cosigned


def test_mutations_fail(cosigner: CosignatureSigner) -> None:
    verifier = cosigner.verifier()
    message = SPEC_CHECKPOINT.encode()
    signature = cosigner.sign_at(SPEC_CHECKPOINT, 1679315147).signature
    for bit in range(len(signature) * 8):
        flipped = bytearray(signature)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not verifier.verify(message, bytes(flipped))
    for bit in range(len(message) * 8):
        flipped = bytearray(message)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not verifier.verify(bytes(flipped), signature)
    assert not verifier.verify(message, signature[:-1])
    assert not verifier.verify(message, signature + b"\x00")
    assert not verifier.verify(message, signature[8:])  # a plain Ed25519 signature


def test_extension_lines_are_signed(cosigner: CosignatureSigner) -> None:
    text = SPEC_CHECKPOINT + "extension\n"
    signature = cosigner.sign_at(text, 9).signature
    assert cosigner.verifier().verify(text.encode(), signature)
    assert not cosigner.verifier().verify((SPEC_CHECKPOINT + "extensioN\n").encode(), signature)
    assert not cosigner.verifier().verify(SPEC_CHECKPOINT.encode(), signature)


def test_verify_refuses_timestamp_above_2_63(cosigner: CosignatureSigner) -> None:
    timestamp = 2**63
    message = b"cosignature/v1\ntime %d\n" % timestamp + SPEC_CHECKPOINT.encode()
    raw = timestamp.to_bytes(8, "big") + Ed25519PrivateKey.from_private_bytes(SEED).sign(message)
    assert not cosigner.verifier().verify(SPEC_CHECKPOINT.encode(), raw)
    with pytest.raises(MalformedError, match="2\\*\\*63"):
        cosignature_timestamp(NoteSignature(NAME, cosigner.key_id, raw))


def test_verify_refuses_non_checkpoint_text(cosigner: CosignatureSigner) -> None:
    text = "not\na checkpoint\n"
    message = b"cosignature/v1\ntime 5\n" + text.encode()
    raw = (5).to_bytes(8, "big") + Ed25519PrivateKey.from_private_bytes(SEED).sign(message)
    assert not cosigner.verifier().verify(text.encode(), raw)
    assert not cosigner.verifier().verify(b"\xff\n1\n", raw)
    with pytest.raises(MalformedError):
        cosigner.sign_at(text, 5)
    with pytest.raises(MalformedError):
        sign_note(text, [cosigner.signer_at(5)])


@pytest.mark.parametrize("timestamp", [-1, MAX_TIMESTAMP + 1, True])
def test_bad_timestamps(cosigner: CosignatureSigner, timestamp: int) -> None:
    with pytest.raises(MalformedError, match="timestamp"):
        cosignature_message(SPEC_CHECKPOINT, timestamp)
    with pytest.raises(MalformedError, match="timestamp"):
        cosigner.sign_at(SPEC_CHECKPOINT, timestamp)
    with pytest.raises(MalformedError, match="timestamp"):
        cosigner.signer_at(timestamp)


def test_timestamp_bounds(cosigner: CosignatureSigner) -> None:
    for timestamp in (0, MAX_TIMESTAMP):
        signature = cosigner.sign_at(SPEC_CHECKPOINT, timestamp)
        assert cosignature_timestamp(signature) == timestamp
        assert cosigner.verifier().verify(SPEC_CHECKPOINT.encode(), signature.signature)


def test_note_level_failures(cosigner: CosignatureSigner) -> None:
    log = Ed25519Signer("example.com/behind-the-sofa", b"\x01" * 32)
    cosigned = add_signatures(sign_note(SPEC_CHECKPOINT, [log]), [cosigner.signer_at(3)])
    with pytest.raises(SignatureError):
        open_note(cosigned.replace(b"20852163", b"20852164"), [cosigner.verifier()])
    with pytest.raises(UnverifiedNoteError):
        open_note(cosigned, [CosignatureSigner(NAME, b"\x43" * 32).verifier()])


# --------------------------------------------------------------------------- keys


def test_private_key_round_trip(cosigner: CosignatureSigner) -> None:
    text = cosigner.private_key
    assert text == (
        f"PRIVATE+KEY+{NAME}+{cosigner.key_id.hex()}+"
        + base64.b64encode(bytes((KEY_TYPE_COSIGNATURE,)) + SEED).decode()
    )
    again = CosignatureSigner.from_private_key(text)
    assert again.vkey == cosigner.vkey
    assert CosignatureVerifier.from_vkey(cosigner.vkey) == cosigner.verifier()
    assert "QkJC" not in repr(cosigner)  # base64 of the seed bytes never shows


def test_private_key_strictness(cosigner: CosignatureSigner) -> None:
    text = cosigner.private_key
    note_key = Ed25519Signer(NAME, SEED).private_key  # same seed, type 0x01
    with pytest.raises(MalformedError, match="type 0x01"):
        CosignatureSigner.from_private_key(note_key)
    with pytest.raises(MalformedError, match="type 0x04"):
        Ed25519Signer.from_private_key(text)
    for end in range(len(text)):
        with pytest.raises(MalformedError):
            CosignatureSigner.from_private_key(text[:end])


def test_generate() -> None:
    fresh = CosignatureSigner.generate("w.example")
    assert CosignatureSigner.from_private_key(fresh.private_key).vkey == fresh.vkey


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**63 - 1),
    st.integers(0, MAX_TIMESTAMP),
    st.binary(min_size=32, max_size=32),
)
def test_sign_then_verify(size: int, timestamp: int, root: bytes) -> None:
    text = format_checkpoint(Checkpoint("log.example/x", size, root))
    cosigner = CosignatureSigner(NAME, SEED)
    signature = cosigner.sign_at(text, timestamp)
    assert cosignature_timestamp(signature) == timestamp
    assert cosigner.verifier().verify(text.encode(), signature.signature)
