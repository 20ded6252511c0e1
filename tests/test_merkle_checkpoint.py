"""Tests of merkle.checkpoint (C2SP tlog-checkpoint).

Known answers: the example checkpoint of c2sp.org/tlog-checkpoint and the empty tree root.
Strictness tables cover every lenient habit of Python's int() and base64 decoder; hypothesis
checks that parse_checkpoint inverts format_checkpoint.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merkle.checkpoint import (
    Checkpoint,
    format_checkpoint,
    open_checkpoint,
    parse_checkpoint,
    parse_decimal,
)
from merkle.cosignature import CosignatureSigner
from merkle.errors import (
    MalformedError,
    SignatureError,
    UnknownKeyError,
    UnverifiedNoteError,
)
from merkle.hashing import EMPTY_ROOT
from merkle.note import Ed25519Signer, add_signatures, parse_note, sign_note
from merkle.tree import MAX_TREE_SIZE

# c2sp.org/tlog-checkpoint, the example at the top of the specification.
SPEC_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_NOTE = (
    SPEC_TEXT + "\n— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4U"
    "RYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
).encode()
ROOT_B64 = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
ORIGIN = "log.example.com/oauth/2026"


def test_spec_example() -> None:
    checkpoint = parse_checkpoint(SPEC_TEXT)
    assert checkpoint == Checkpoint(
        "example.com/behind-the-sofa", 20852163, base64.b64decode(ROOT_B64)
    )
    assert format_checkpoint(checkpoint) == SPEC_TEXT
    note = parse_note(SPEC_NOTE)
    assert parse_checkpoint(note.text) == checkpoint
    assert note.signatures[0].name == checkpoint.origin


def test_empty_tree() -> None:
    text = "example.com/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    assert parse_checkpoint(text) == Checkpoint("example.com/log", 0, EMPTY_ROOT)


def test_extension_lines() -> None:
    text = SPEC_TEXT + "ext one\n— ext two\n"
    checkpoint = parse_checkpoint(text)
    assert checkpoint.extensions == ("ext one", "— ext two")
    assert format_checkpoint(checkpoint) == text


@pytest.mark.parametrize(
    "size",
    [
        "+5", "-5", " 5", "5 ", "05", "00", "5_000", "5,000", "1e3", "0x10", "",
        "\u0665",  # ARABIC-INDIC DIGIT FIVE: int() accepts it
        "\uff15",  # FULLWIDTH DIGIT FIVE
        "1\u0660",
        "5\u00a0", str(MAX_TREE_SIZE + 1), str(2**64), "9" * 40,
    ],
)
def test_tree_size_strictness(size: str) -> None:
    with pytest.raises(MalformedError, match="tree size"):
        parse_checkpoint(f"o\n{size}\n{ROOT_B64}\n")


@pytest.mark.parametrize("size", ["0", "1", "10", str(MAX_TREE_SIZE)])
def test_tree_size_accepted(size: str) -> None:
    assert parse_checkpoint(f"o\n{size}\n{ROOT_B64}\n").tree_size == int(size)


@pytest.mark.parametrize(
    "root",
    [
        ROOT_B64.rstrip("="),  # unpadded
        ROOT_B64[:-2] + "J=",  # non-zero padding bits
        ROOT_B64.replace("/", "_"),  # URL-safe alphabet
        ROOT_B64 + "=",  # too much padding
        " " + ROOT_B64,
        ROOT_B64 + " ",
        ROOT_B64[:10] + " " + ROOT_B64[10:],
        base64.b64encode(bytes(31)).decode(),  # 31 bytes
        base64.b64encode(bytes(33)).decode(),  # 33 bytes
        base64.b64encode(bytes(64)).decode(),
        "",
        bytes(32).hex(),  # hex is not base64 of 32 bytes
    ],
)
def test_root_hash_strictness(root: str) -> None:
    with pytest.raises(MalformedError, match="root hash"):
        parse_checkpoint(f"o\n5\n{root}\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SPEC_TEXT[:-1], "newline"),
        ("o\n5\n", "lines"),
        ("o\n", "lines"),
        ("\n", "lines"),
        (f"\n5\n{ROOT_B64}\n", "origin"),
        (f"o\n5\n{ROOT_B64}\n\n", "extension"),
        (f"o\n5\n{ROOT_B64}\next\n\n", "extension"),
        (f"o\x01\n5\n{ROOT_B64}\n", "origin"),
        (f"o\n5\n{ROOT_B64}\ne\tx\n", "extension"),
        (f"o\r\n5\n{ROOT_B64}\n", "origin"),
    ],
)
def test_checkpoint_text_strictness(text: str, message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        parse_checkpoint(text)


def test_every_truncation_rejected() -> None:
    for end in range(len(SPEC_TEXT)):
        with pytest.raises(MalformedError):
            parse_checkpoint(SPEC_TEXT[:end])


def test_parse_decimal_bounds() -> None:
    assert parse_decimal("7", what="n", maximum=7) == 7
    with pytest.raises(MalformedError, match="larger"):
        parse_decimal("8", what="n", maximum=7)


def test_checkpoint_values_are_validated() -> None:
    root = bytes(32)
    for bad_size in (-1, MAX_TREE_SIZE + 1, True):
        with pytest.raises(MalformedError):
            Checkpoint("o", bad_size, root)
    for bad_root in (bytes(31), bytes(33)):
        with pytest.raises(MalformedError):
            Checkpoint("o", 1, bad_root)
    with pytest.raises(MalformedError):
        Checkpoint("", 1, root)
    with pytest.raises(MalformedError):
        Checkpoint("a\nb", 1, root)
    with pytest.raises(MalformedError):
        Checkpoint("o", 1, root, ("",))


_LINE_CHARS = st.characters(blacklist_categories=["Cs", "Cc"])
_lines = st.text(_LINE_CHARS, min_size=1, max_size=20)
_checkpoints = st.builds(
    Checkpoint,
    _lines,
    st.integers(0, MAX_TREE_SIZE),
    st.binary(min_size=32, max_size=32),
    st.lists(_lines, max_size=3).map(tuple),
)


@settings(max_examples=100, deadline=None)
@given(_checkpoints)
def test_parse_inverts_format(checkpoint: Checkpoint) -> None:
    assert parse_checkpoint(format_checkpoint(checkpoint)) == checkpoint


# --------------------------------------------------------------------------- open_checkpoint


@pytest.fixture(scope="module")
def log() -> Ed25519Signer:
    return Ed25519Signer(ORIGIN, b"\x11" * 32)


@pytest.fixture(scope="module")
def witness() -> CosignatureSigner:
    return CosignatureSigner("witness.example/w1", b"\x22" * 32)


def _text(size: int = 5) -> str:
    return format_checkpoint(Checkpoint(ORIGIN, size, bytes(range(32))))


def test_open_checkpoint(log: Ed25519Signer, witness: CosignatureSigner) -> None:
    signed = add_signatures(sign_note(_text(), [log]), [witness.signer_at(1_700_000_000)])
    checkpoint, note, verified = open_checkpoint(signed, log.verifier())
    assert checkpoint == parse_checkpoint(_text())
    assert note.text == _text()
    assert [s.name for s in verified] == [ORIGIN]
    _, _, with_witness = open_checkpoint(signed, log.verifier(), [witness.verifier()])
    assert [s.name for s in with_witness] == [ORIGIN, "witness.example/w1"]


def test_open_checkpoint_requires_origin_to_be_log_name(log: Ed25519Signer) -> None:
    other = Ed25519Signer("other.example/log", b"\x11" * 32)
    signed = sign_note(_text(), [other])
    with pytest.raises(UnknownKeyError, match="origin"):
        open_checkpoint(signed, other.verifier())


def test_open_checkpoint_requires_log_signature(
    log: Ed25519Signer, witness: CosignatureSigner
) -> None:
    only_witness = sign_note(_text(), [witness.signer_at(5)])
    with pytest.raises(UnverifiedNoteError, match="log key"):
        open_checkpoint(only_witness, log.verifier(), [witness.verifier()])
    stranger = Ed25519Signer(ORIGIN, b"\x33" * 32)  # same name, another key
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(sign_note(_text(), [stranger]), log.verifier())


def test_open_checkpoint_rejects_bad_signatures(
    log: Ed25519Signer, witness: CosignatureSigner
) -> None:
    signed = sign_note(_text(5), [log])
    forged = signed.replace(b"\n5\n", b"\n6\n", 1)
    with pytest.raises(SignatureError):
        open_checkpoint(forged, log.verifier())
    cosigned = add_signatures(signed, [witness.signer_at(7)])
    lines = cosigned.split(b"\n")
    raw = bytearray(base64.b64decode(lines[-2].split(b" ")[2]))
    raw[-1] ^= 0x80
    lines[-2] = b" ".join([*lines[-2].split(b" ")[:2], base64.b64encode(bytes(raw))])
    with pytest.raises(SignatureError, match=r"witness\.example/w1"):
        open_checkpoint(b"\n".join(lines), log.verifier(), [witness.verifier()])


def test_open_checkpoint_rejects_malformed_text(log: Ed25519Signer) -> None:
    with pytest.raises(MalformedError, match="tree size"):
        open_checkpoint(sign_note(f"{ORIGIN}\n05\n{ROOT_B64}\n", [log]), log.verifier())
