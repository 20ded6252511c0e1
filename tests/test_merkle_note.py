"""Tests of merkle.note (C2SP signed-note).

Known answers come from golang.org/x/mod/sumdb/note (package documentation and note_test.go:
the PeterNeumann / EnochRoot keys, note and signatures) and from the example of
c2sp.org/signed-note. Strictness tables follow the same sources; hypothesis checks that
parse_note inverts format_note and that sign_note / open_note agree.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merkle.cosignature import CosignatureVerifier
from merkle.errors import MalformedError, MerkleError, SignatureError, UnverifiedNoteError
from merkle.note import (
    KEY_TYPE_ED25519,
    MAX_SIGNATURES,
    Ed25519Signer,
    Ed25519Verifier,
    Note,
    NoteSignature,
    VKey,
    add_signatures,
    check_key_name,
    decode_base64,
    format_note,
    format_signature_lines,
    format_vkey,
    generate_key,
    index_verifiers,
    key_id,
    merge_signatures,
    open_note,
    parse_note,
    parse_signature_lines,
    parse_verifier,
    parse_vkey,
    sign_note,
    verify_note,
)

# golang.org/x/mod/sumdb/note: note.go package documentation and note_test.go.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6"
    "KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33W"
    "Wd1RvMc+QQ=\n"
)
SIGNED = (TEXT + "\n" + PETER_SIG).encode()
# A type-0x04 (cosignature) vkey of a public witness, from transparency-dev/formats
# note/note_cosigv1_test.go (TestCoSigV1NewVerifier).
REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"

# c2sp.org/signed-note: the example at the top of the specification (text with a blank line).
C2SP_NOTE = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed è subito sera.\n"
    "\n"
    "— quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouF"
    "SQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
).encode()


@pytest.fixture(scope="module")
def peter() -> Ed25519Verifier:
    return Ed25519Verifier.from_vkey(PETER_VKEY)


@pytest.fixture(scope="module")
def enoch() -> Ed25519Verifier:
    return Ed25519Verifier.from_vkey(ENOCH_VKEY)


# --------------------------------------------------------------------------- known answers


def test_go_private_key_gives_go_vkey_and_key_id() -> None:
    signer = Ed25519Signer.from_private_key(PETER_SKEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_id == bytes.fromhex("c74f20a3")
    assert signer.vkey == PETER_VKEY
    assert signer.private_key == PETER_SKEY
    assert signer.verifier() == Ed25519Verifier.from_vkey(PETER_VKEY)


def test_key_id_formula() -> None:
    public = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:]
    assert key_id("PeterNeumann", KEY_TYPE_ED25519, public) == bytes.fromhex("c74f20a3")


def test_sign_reproduces_go_note() -> None:
    signer = Ed25519Signer.from_private_key(PETER_SKEY)
    assert sign_note(TEXT, [signer]) == SIGNED


def test_open_go_note(peter: Ed25519Verifier) -> None:
    note, verified = open_note(SIGNED, [peter])
    assert note.text == TEXT
    assert len(verified) == 1
    assert verified[0].name == "PeterNeumann"
    assert verified[0].key_id == bytes.fromhex("c74f20a3")
    assert verified[0].signature == base64.b64decode(PETER_SIG.split()[2])[4:]


def test_open_go_note_with_two_signatures(peter: Ed25519Verifier, enoch: Ed25519Verifier) -> None:
    data = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    _, only_peter = open_note(data, [peter])
    assert [s.name for s in only_peter] == ["PeterNeumann"]
    _, both = open_note(data, [peter, enoch])
    assert [s.name for s in both] == ["PeterNeumann", "EnochRoot"]
    assert both[1].key_id == bytes.fromhex("af0cfe78")
    with pytest.raises(UnverifiedNoteError):
        open_note(data, [])


def test_c2sp_example_text_ends_at_last_blank_line() -> None:
    note = parse_note(C2SP_NOTE)
    assert note.text == (
        "Ognuno sta solo sul cuor della terra\n"
        "trafitto da un raggio di sole:\n"
        "\n"
        "ed è subito sera.\n"
    )
    (signature,) = note.signatures
    assert signature.name == "quasimodo.example/salvatore"
    assert len(signature.signature) == 64
    assert format_note(note) == C2SP_NOTE


def test_go_rejects_keys_with_adjusted_hash() -> None:
    # note_test.go TestNewVerifier: wrong key length and unknown algorithm, key hash adjusted.
    with pytest.raises(MalformedError):
        parse_verifier(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
    with pytest.raises(MalformedError, match="type 0x65"):
        parse_verifier("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_parse_verifier_dispatches_on_type() -> None:
    assert isinstance(parse_verifier(PETER_VKEY), Ed25519Verifier)
    cosigner = parse_verifier(REMORA_VKEY)
    assert isinstance(cosigner, CosignatureVerifier)
    assert cosigner.key_id == bytes.fromhex("da77ade7")


def test_vkey_round_trip() -> None:
    parsed = parse_vkey(PETER_VKEY)
    assert parsed == VKey("PeterNeumann", 1, parsed.public_key)
    assert format_vkey(parsed) == PETER_VKEY
    assert Ed25519Verifier.from_vkey(PETER_VKEY).vkey == PETER_VKEY


# --------------------------------------------------------------------------- keys: strictness


def _substrings(text: str) -> list[str]:
    return [
        text[i:j]
        for i in range(len(text) + 1)
        for j in range(i + 1, len(text) + 1)
        if (i, j) != (0, len(text))
    ]


def test_every_substring_and_bumped_byte_of_vkey_rejected() -> None:
    # note_test.go TestNewVerifier.
    for bad in _substrings(PETER_VKEY):
        with pytest.raises(MalformedError):
            parse_verifier(bad)
    raw = bytearray(PETER_VKEY.encode())
    for i in range(len(raw)):
        raw[i] += 1
        with pytest.raises(MalformedError):
            parse_verifier(raw.decode())
        raw[i] -= 1


def test_every_substring_and_bumped_byte_of_private_key_rejected() -> None:
    # note_test.go TestNewSigner.
    for bad in _substrings(PETER_SKEY):
        with pytest.raises(MalformedError):
            Ed25519Signer.from_private_key(bad)
    raw = bytearray(PETER_SKEY.encode())
    for i in range(len(raw)):
        raw[i] += 1
        with pytest.raises(MalformedError):
            Ed25519Signer.from_private_key(raw.decode())
        raw[i] -= 1


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # uppercase hex
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW=",  # bad padding
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq_LDE4izWy10TW",  # URL-safe
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX",  # padding bits
        " PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n",  # newline
        "PeterNeumann+0c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # 9 hex digits
        "PeterNeumann+c74f20a3",  # no key
        "",
    ],
)
def test_vkey_strictness(vkey: str) -> None:
    with pytest.raises(MalformedError):
        parse_verifier(vkey)


def test_vkey_of_wrong_type_for_ed25519_verifier() -> None:
    with pytest.raises(MalformedError, match="expected 0x01"):
        Ed25519Verifier.from_vkey(REMORA_VKEY)


def test_private_key_errors_and_repr_never_show_the_key() -> None:
    signer = Ed25519Signer.from_private_key(PETER_SKEY)
    material = PETER_SKEY.rsplit("+", 1)[1]
    assert material not in repr(signer)
    assert "AYEKFALV" not in repr(signer)
    for bad in (PETER_SKEY[:-2], PETER_SKEY.replace("c74f20a3", "c74f20a4"), PETER_SKEY + "A"):
        with pytest.raises(MalformedError) as info:
            Ed25519Signer.from_private_key(bad)
        assert "AYEKFALV" not in str(info.value)


def test_generate_key_round_trip() -> None:
    skey, vkey = generate_key("example.com/log")
    signer = Ed25519Signer.from_private_key(skey)
    assert signer.vkey == vkey
    note = sign_note("hello\n", [signer])
    assert open_note(note, [parse_verifier(vkey)])[0].text == "hello\n"


@pytest.mark.parametrize(
    "name",
    ["", "a b", "a+b", "a\tb", "a\nb", "a\u00a0b", "a\u2003b", "a\u3000b", "a\u2028b", "a\x00b",
     "a\x1fb", "a\u0085b", "\ud800"],
)
def test_invalid_key_names(name: str) -> None:
    with pytest.raises(MalformedError):
        check_key_name(name)
    with pytest.raises(MalformedError):
        Ed25519Signer(name, bytes(32))


@pytest.mark.parametrize("name", ["example.com/log", "PeterNeumann", "é", "a—b", "x/y?z=1&w"])
def test_valid_key_names(name: str) -> None:
    check_key_name(name)
    signer = Ed25519Signer(name, bytes(32))
    assert open_note(sign_note("t\n", [signer]), [signer.verifier()])[1][0].name == name


def test_seed_and_public_key_lengths() -> None:
    for size in (0, 31, 33, 64):
        with pytest.raises(MalformedError):
            Ed25519Signer("n", bytes(size))
        with pytest.raises(MalformedError):
            Ed25519Verifier("n", bytes(size))


# --------------------------------------------------------------------------- notes: strictness


def test_go_bad_messages_rejected(peter: Ed25519Verifier) -> None:
    # note_test.go TestOpen, "Invalid encoded message syntax".
    bad_messages = [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "— Bad Name " + PETER_SIG.split()[2],
        TEXT + "\n" + "— Bad Name " + PETER_SIG.split()[2] + "\n",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    ]
    for message in bad_messages:
        with pytest.raises(MalformedError):
            open_note(message.encode(), [peter])
    with pytest.raises(MalformedError, match="UTF-8"):
        open_note(b"\xff" + SIGNED, [peter])


def test_every_truncation_of_a_note_rejected() -> None:
    for end in range(len(SIGNED)):
        with pytest.raises(MalformedError):
            parse_note(SIGNED[:end])


@pytest.mark.parametrize("char", ["\x00", "\t", "\r", "\x0b", "\x0c", "\x1b", "\x1f"])
def test_control_characters_rejected(char: str) -> None:
    with pytest.raises(MalformedError, match="forbidden"):
        parse_note(("a" + char + "b\n\n" + PETER_SIG).encode())
    with pytest.raises(MalformedError, match="forbidden"):
        sign_note("a" + char + "b\n", [Ed25519Signer.from_private_key(PETER_SKEY)])


def test_only_ascii_controls_below_space_are_forbidden(peter: Ed25519Verifier) -> None:
    # signed-note forbids "ASCII control characters (those below U+0020) other than newline".
    signer = Ed25519Signer.from_private_key(PETER_SKEY)
    text = "del \x7f and c1 \u0080 are text\n"
    assert open_note(sign_note(text, [signer]), [peter])[0].text == text


@pytest.mark.parametrize(
    "line",
    [
        "- PeterNeumann " + PETER_SIG.split()[2],  # hyphen, not em dash
        "—PeterNeumann " + PETER_SIG.split()[2],  # no space after dash
        "— PeterNeumann  " + PETER_SIG.split()[2],  # two spaces
        "— PeterNeumann",  # no signature
        "— PeterNeumann ",  # empty signature
        "— PeterNeumann AAAAAA==",  # shorter than key ID + 1
        "— PeterNeumann " + PETER_SIG.split()[2].rstrip("="),  # unpadded
        "— PeterNeumann " + PETER_SIG.split()[2] + " ",  # trailing space
        "— Peter+Neumann " + PETER_SIG.split()[2],  # plus in name
        "— " + PETER_SIG.split()[2],  # no name
    ],
)
def test_bad_signature_lines(line: str) -> None:
    with pytest.raises(MalformedError):
        parse_note((TEXT + "\n" + line + "\n").encode())


def test_signature_limit() -> None:
    at_limit = (TEXT + "\n" + PETER_SIG * MAX_SIGNATURES).encode()
    assert len(parse_note(at_limit).signatures) == MAX_SIGNATURES
    with pytest.raises(MalformedError, match="limit"):
        parse_note((TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1)).encode())


def test_sixteen_signers_accepted() -> None:
    signers = [Ed25519Signer(f"signer{i}", bytes([i]) * 32) for i in range(16)]
    data = sign_note(TEXT, signers)
    _, verified = open_note(data, [s.verifier() for s in signers])
    assert [s.name for s in verified] == [s.name for s in signers]


def test_note_values_are_validated() -> None:
    sig = NoteSignature("n", b"\x00" * 4, b"\x01")
    with pytest.raises(MalformedError):
        Note("no final newline", (sig,))
    with pytest.raises(MalformedError):
        Note("", (sig,))
    with pytest.raises(MalformedError):
        Note("text\n", ())
    with pytest.raises(MalformedError):
        NoteSignature("n", b"\x00" * 3, b"\x01")
    with pytest.raises(MalformedError):
        NoteSignature("n", b"\x00" * 4, b"")


def test_decode_base64_is_canonical() -> None:
    assert decode_base64("QQ==", what="x") == b"A"
    for bad in ("QQ", "QR==", "Q Q==", "QQ==\n", "QQ=", "-_==", "QQ==QQ==", "é"):
        with pytest.raises(MalformedError):
            decode_base64(bad, what="x")


# --------------------------------------------------------------------------- signatures


def test_unknown_key_is_ignored_known_key_verifies(peter: Ed25519Verifier) -> None:
    other = Ed25519Signer("PeterNeumann", b"\x07" * 32)  # same name, other key ID
    stranger = Ed25519Signer("stranger", b"\x08" * 32)
    data = add_signatures(SIGNED, [other, stranger])
    note, verified = open_note(data, [peter])
    assert len(note.signatures) == 3
    assert [(s.name, s.key_id) for s in verified] == [("PeterNeumann", peter.key_id)]


def test_known_key_with_bad_signature_rejected(peter: Ed25519Verifier) -> None:
    # note_test.go: "ABCD" inserted into the signature.
    tampered = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(SignatureError, match="PeterNeumann\\+c74f20a3"):
        open_note(tampered.encode(), [peter])


def test_bad_known_signature_rejected_even_beside_a_good_one(peter: Ed25519Verifier) -> None:
    raw = bytearray(base64.b64decode(PETER_SIG.split()[2]))
    raw[-1] ^= 1
    bad_line = "— PeterNeumann " + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(SignatureError):
        open_note((TEXT + "\n" + PETER_SIG + bad_line).encode(), [peter])


def test_repeated_signature_verified_once(peter: Ed25519Verifier) -> None:
    _, verified = open_note((TEXT + "\n" + PETER_SIG + PETER_SIG).encode(), [peter])
    assert len(verified) == 1


def test_flipping_any_signature_bit_fails(peter: Ed25519Verifier) -> None:
    raw = base64.b64decode(PETER_SIG.split()[2])
    for bit in range(32, len(raw) * 8):  # every bit after the key ID
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        line = "— PeterNeumann " + base64.b64encode(bytes(flipped)).decode() + "\n"
        with pytest.raises(SignatureError):
            open_note((TEXT + "\n" + line).encode(), [peter])
    for bit in range(32):  # a flipped key ID makes the key unknown
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        line = "— PeterNeumann " + base64.b64encode(bytes(flipped)).decode() + "\n"
        with pytest.raises(UnverifiedNoteError):
            open_note((TEXT + "\n" + line).encode(), [peter])


def test_flipping_any_text_bit_fails(peter: Ed25519Verifier) -> None:
    text = TEXT.encode()
    for bit in range(len(text) * 8):
        flipped = bytearray(text)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(MerkleError):
            open_note(bytes(flipped) + b"\n" + PETER_SIG.encode(), [peter])


def test_ambiguous_verifiers_rejected(peter: Ed25519Verifier) -> None:
    class Impostor:
        name = peter.name
        key_id = peter.key_id

        def verify(self, message: bytes, signature: bytes) -> bool:
            return True

    with pytest.raises(MalformedError, match="ambiguous"):
        open_note(SIGNED, [peter, Impostor()])
    # The same verifier twice is not ambiguous.
    assert open_note(SIGNED, [peter, Ed25519Verifier.from_vkey(PETER_VKEY)])[1]


def test_verify_note_with_an_index(peter: Ed25519Verifier, enoch: Ed25519Verifier) -> None:
    known = index_verifiers([peter, enoch])
    assert set(known) == {(peter.name, peter.key_id), (enoch.name, enoch.key_id)}
    note = parse_note((TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode())
    assert verify_note(note, known) == verify_note(note, [peter, enoch])
    assert len(verify_note(note, known)) == 2


# --------------------------------------------------------------------------- adding signatures


def test_add_signatures_keeps_lines_and_replaces_same_key(peter: Ed25519Verifier) -> None:
    second = Ed25519Signer("second.example", b"\x02" * 32)
    data = add_signatures(SIGNED, [second])
    note = parse_note(data)
    assert [s.name for s in note.signatures] == ["PeterNeumann", "second.example"]
    again = add_signatures(data, [Ed25519Signer.from_private_key(PETER_SKEY)])
    assert [s.name for s in parse_note(again).signatures] == ["second.example", "PeterNeumann"]
    _, verified = open_note(again, [peter, second.verifier()])
    assert len(verified) == 2


def test_duplicate_signers_rejected() -> None:
    signer = Ed25519Signer.from_private_key(PETER_SKEY)
    with pytest.raises(MalformedError, match="share"):
        sign_note(TEXT, [signer, signer])
    with pytest.raises(MalformedError):
        sign_note(TEXT, [])


def test_merge_signatures_and_signature_lines(peter: Ed25519Verifier) -> None:
    second = Ed25519Signer("second.example", b"\x02" * 32)
    line = NoteSignature(second.name, second.key_id, second.sign(TEXT.encode()))
    block = format_signature_lines([line])
    assert parse_signature_lines(block) == (line,)
    merged = merge_signatures(SIGNED, parse_signature_lines(block))
    _, verified = open_note(merged, [peter, second.verifier()])
    assert [s.name for s in verified] == ["PeterNeumann", "second.example"]
    with pytest.raises(MalformedError):
        merge_signatures(SIGNED, [line, line])
    with pytest.raises(MalformedError):
        parse_signature_lines(block[:-1])


# --------------------------------------------------------------------------- properties

# Text characters: anything but controls (those below U+0020 are forbidden; DEL and C1
# controls are allowed by the specification but left out here) and lone surrogates.
_TEXT_CHARS = st.characters(blacklist_categories=["Cs", "Cc"])
# Key names: no Unicode space either (every str.isspace() character is Cc, Zs, Zl or Zp).
_NAME_CHARS = st.characters(
    blacklist_categories=["Cs", "Cc", "Zs", "Zl", "Zp"], blacklist_characters="+"
)
_names = st.text(_NAME_CHARS, min_size=1, max_size=12)
_texts = st.lists(st.text(_TEXT_CHARS, max_size=20), min_size=1, max_size=6).map(
    lambda lines: "\n".join(lines) + "\n"
)
_signatures = st.builds(
    NoteSignature, _names, st.binary(min_size=4, max_size=4), st.binary(min_size=1, max_size=80)
)


@settings(max_examples=100, deadline=None)
@given(_texts, st.lists(_signatures, min_size=1, max_size=5))
def test_parse_inverts_format(text: str, signatures: list[NoteSignature]) -> None:
    note = Note(text, tuple(signatures))
    assert parse_note(format_note(note)) == note


@settings(max_examples=40, deadline=None)
@given(_texts, _names, st.binary(min_size=32, max_size=32))
def test_sign_then_open_verifies(text: str, name: str, seed: bytes) -> None:
    signer = Ed25519Signer(name, seed)
    note, verified = open_note(sign_note(text, [signer]), [signer.verifier()])
    assert note.text == text
    assert [(s.name, s.key_id) for s in verified] == [(name, signer.key_id)]
    assert Ed25519Signer.from_private_key(signer.private_key).vkey == signer.vkey
    assert parse_verifier(signer.vkey) == signer.verifier()
