"""parse_receipt's proof lines: the one-pass reading of well-formed proofs agrees with a
line-by-line reference, and every malformed proof line is still refused with its reason.

The reference decodes each line with :func:`merkle.note.decode_base64` (canonical base64 only)
and requires 32 bytes, at most 63 lines, then an empty line, as c2sp.org/tlog-proof says.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.errors import MalformedError
from merkle.note import Ed25519Signer, decode_base64, sign_note
from merkle.receipt import MAX_PROOF_HASHES, RECEIPT_HEADER, parse_receipt

LOG = Ed25519Signer("log.example.com/parse", b"\x07" * 32)
NOTE = sign_note(format_checkpoint(Checkpoint(LOG.name, 1 << 40, b"\x11" * 32)), [LOG])


def _reference_proof(lines: list[bytes]) -> tuple[bytes, ...] | None:
    """The proof the specification reads from these lines, or None if it is malformed."""
    if len(lines) > MAX_PROOF_HASHES:
        return None
    proof = []
    for line in lines:
        try:
            value = decode_base64(line.decode("ascii"), what="proof hash")
        except (MalformedError, UnicodeDecodeError):
            return None
        if len(value) != 32:
            return None
        proof.append(value)
    return tuple(proof)


def _receipt(lines: list[bytes]) -> bytes:
    head = f"{RECEIPT_HEADER}\nindex 5\n".encode()
    return head + b"".join(line + b"\n" for line in lines) + b"\n" + NOTE


def _mutate(line: bytes, position: int, byte: int) -> bytes:
    return line[:position] + bytes([byte]) + line[position + 1 :]


@settings(max_examples=300, deadline=None)
@given(
    hashes=st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PROOF_HASHES + 1),
    mutation=st.none() | st.tuples(st.integers(0, 64), st.integers(0, 45), st.integers(0, 255)),
)
def test_proof_lines_agree_with_the_line_by_line_reading(
    hashes: list[bytes], mutation: tuple[int, int, int] | None
) -> None:
    lines = [base64.b64encode(h) for h in hashes]
    if mutation is not None and lines:
        which, position, byte = mutation
        which %= len(lines)
        lines[which] = _mutate(lines[which], position % (len(lines[which]) + 1), byte)
    expected = _reference_proof(lines) if all(b"\n" not in line for line in lines) else None
    data = _receipt(lines)
    if expected is None:
        with pytest.raises(MalformedError):
            parse_receipt(data)
    else:
        receipt = parse_receipt(data)
        assert receipt.proof == expected
        assert receipt.checkpoint == NOTE
        assert receipt.index == 5


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (base64.b64encode(b"\x00" * 31 + b"\x01")[:-2] + b"B=", "non-canonical"),  # padding bits
        (base64.b64encode(b"\x00" * 32)[:-1], "not valid"),  # no padding
        (base64.b64encode(b"\x00" * 33), "33 bytes"),
        (base64.b64encode(b"\x00" * 32) + b" ", "not valid"),
        (b"-" + base64.b64encode(b"\x00" * 32)[1:], "not valid"),  # URL-safe alphabet
    ],
)
def test_malformed_proof_lines_name_the_problem(line: bytes, reason: str) -> None:
    good = base64.b64encode(b"\x22" * 32)
    with pytest.raises(MalformedError, match=reason):
        parse_receipt(_receipt([good, line, good]))


def test_limits_and_the_empty_proof() -> None:
    good = base64.b64encode(b"\x33" * 32)
    assert parse_receipt(_receipt([])).proof == ()
    assert len(parse_receipt(_receipt([good] * MAX_PROOF_HASHES)).proof) == MAX_PROOF_HASHES
    with pytest.raises(MalformedError, match="more than 63"):
        parse_receipt(_receipt([good] * (MAX_PROOF_HASHES + 1)))
    with pytest.raises(MalformedError, match="empty separator"):
        parse_receipt(f"{RECEIPT_HEADER}\nindex 5\n".encode() + good + b"\n")
