"""C2SP tlog-proof: offline-verifiable receipts that an entry is in a log.

A receipt (https://c2sp.org/tlog-proof) is text::

    c2sp.org/tlog-proof@v1
    extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6
    index 73894
    gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=
    B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=

    example.com/fancylog
    109482
    sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=

    — example.com/fancylog hI2DJw...
    — witness1.example mJirIklj...

* the header line ``c2sp.org/tlog-proof@v1``;
* optionally ``extra <base64>``: opaque, *unauthenticated* application data;
* ``index <n>``: the entry's zero-based index, canonical decimal;
* zero or more lines of base64 SHA-256 hashes: the RFC 6962 §2.1.1 inclusion proof, from
  the leaf's sibling up to the root's child;
* an empty line, then the checkpoint signed note verbatim (log signature and cosignatures).

At most :data:`MAX_PROOF_HASHES` (63) proof hashes are accepted: a tree of at most 2**63 - 1
leaves has no longer path.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from functools import lru_cache

from merkle.checkpoint import Checkpoint, parse_checkpoint, parse_decimal
from merkle.errors import MalformedError, ProofError
from merkle.hashing import HASH_SIZE, leaf_hash
from merkle.note import Note, decode_base64, encode_base64, parse_note
from merkle.policy import Policy, verify_parsed_checkpoint
from merkle.tree import MAX_TREE_SIZE, verify_inclusion

__all__ = [
    "MAX_PROOF_HASHES",
    "RECEIPT_HEADER",
    "Receipt",
    "format_receipt",
    "parse_receipt",
    "verify_receipt",
]

RECEIPT_HEADER = "c2sp.org/tlog-proof@v1"
"""First line of every tlog-proof receipt."""

MAX_PROOF_HASHES = 63
"""Longest inclusion proof accepted (the depth of a tree of 2**63 - 1 leaves)."""

_EXTRA_PREFIX = b"extra "
_INDEX_PREFIX = b"index "
# A run of proof lines, each the canonical standard base64 of exactly 32 bytes: 43 alphabet
# characters whose last one leaves its 2 padding bits zero, then "=". Every line accepted here
# is one the line-by-line parser accepts, with the same value; anything else (a bad line, a
# 64th hash) falls back to that parser, which names the problem.
_PROOF_BLOCK = re.compile(
    rb"(?:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=\n){0,%d}" % MAX_PROOF_HASHES
)
_a2b_base64 = binascii.a2b_base64
_new = object.__new__
_set = object.__setattr__


@dataclass(frozen=True, slots=True)
class Receipt:
    """A tlog-proof receipt: entry index, inclusion proof, signed checkpoint, optional extra.

    ``checkpoint`` is the signed note bytes, kept verbatim. ``extra`` is unauthenticated data
    (``None`` when the line is absent, ``b""`` for an empty ``extra`` line).

    Requires ``0 <= index < 2**63 - 1``, at most 63 proof hashes of 32 bytes each and a
    checkpoint that is a well-formed signed note whose text is a checkpoint; raises
    MalformedError otherwise. Nothing is verified until :func:`verify_receipt`.
    """

    index: int
    proof: tuple[bytes, ...]
    checkpoint: bytes
    extra: bytes | None = None
    # The checkpoint note and text, parsed once here and reused by verify_receipt.
    _note: Note = field(init=False, repr=False, compare=False)
    _parsed_checkpoint: Checkpoint = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.index) is not int or not 0 <= self.index < MAX_TREE_SIZE:
            raise MalformedError(f"receipt index must be an int in 0..{MAX_TREE_SIZE - 1}")
        if not isinstance(self.proof, tuple):
            raise MalformedError("receipt proof must be a tuple of hashes")
        if len(self.proof) > MAX_PROOF_HASHES:
            raise MalformedError(
                f"receipt proof has {len(self.proof)} hashes, more than {MAX_PROOF_HASHES}"
            )
        for number, node in enumerate(self.proof, 1):
            if not isinstance(node, bytes) or len(node) != HASH_SIZE:
                raise MalformedError(f"receipt proof hash {number} is not {HASH_SIZE} bytes")
        if self.extra is not None and not isinstance(self.extra, bytes):
            raise MalformedError("receipt extra data must be bytes or None")
        if not isinstance(self.checkpoint, bytes):
            raise MalformedError("receipt checkpoint must be bytes")
        note = parse_note(self.checkpoint)
        object.__setattr__(self, "_note", note)
        object.__setattr__(self, "_parsed_checkpoint", parse_checkpoint(note.text))

    @property
    def note(self) -> Note:
        """The checkpoint signed note, parsed (its signatures are not verified)."""
        return self._note

    @property
    def parsed_checkpoint(self) -> Checkpoint:
        """The checkpoint the note's text holds, parsed (not verified)."""
        return self._parsed_checkpoint


def _next_line(data: bytes, start: int, what: str) -> tuple[bytes, int]:
    end = data.find(b"\n", start)
    if end < 0:
        raise MalformedError(f"receipt ends before its {what} line")
    return data[start:end], end + 1


def _ascii(line: bytes, what: str) -> str:
    try:
        return line.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedError(f"receipt {what} line is not ASCII") from None


def parse_receipt(data: bytes) -> Receipt:
    """Parse a tlog-proof receipt strictly (signatures and proof are not verified).

    tlog-proof "Format". Raises MalformedError for a wrong header line, a bad ``extra`` line
    (not canonical base64), a missing or non-canonical ``index`` line, a proof line that is not
    canonical base64 of 32 bytes, more than 63 proof lines, no empty line before the
    checkpoint, or a checkpoint that is not a well-formed signed checkpoint note.
    """
    line, pos = _next_line(data, 0, "header")
    if line != RECEIPT_HEADER.encode("ascii"):
        raise MalformedError(f"receipt does not start with the line {RECEIPT_HEADER!r}")
    line, pos = _next_line(data, pos, "index")
    extra: bytes | None = None
    if line.startswith(_EXTRA_PREFIX):
        extra = decode_base64(_ascii(line[len(_EXTRA_PREFIX) :], "extra"), what="receipt extra")
        line, pos = _next_line(data, pos, "index")
    if not line.startswith(_INDEX_PREFIX):
        raise MalformedError("receipt has no 'index <n>' line after its header")
    index = parse_decimal(
        _ascii(line[len(_INDEX_PREFIX) :], "index"), what="receipt index", maximum=MAX_TREE_SIZE - 1
    )
    block = _PROOF_BLOCK.match(data, pos)
    end = block.end() if block is not None else pos
    if data[end : end + 1] == b"\n":
        lines = data[pos : end - 1].split(b"\n") if end > pos else []
        return _parsed_receipt(index, tuple(map(_a2b_base64, lines)), data[end + 1 :], extra)
    proof: list[bytes] = []
    while True:
        line, pos = _next_line(data, pos, "empty separator")
        if not line:
            break
        if len(proof) == MAX_PROOF_HASHES:
            raise MalformedError(f"receipt proof has more than {MAX_PROOF_HASHES} hashes")
        node = decode_base64(_ascii(line, "proof"), what=f"receipt proof hash {len(proof) + 1}")
        if len(node) != HASH_SIZE:
            raise MalformedError(
                f"receipt proof hash {len(proof) + 1} is {len(node)} bytes, expected {HASH_SIZE}"
            )
        proof.append(node)
    return _parsed_receipt(index, tuple(proof), data[pos:], extra)


@lru_cache(maxsize=64)
def _parse_checkpoint_note(checkpoint: bytes) -> tuple[Note, Checkpoint]:
    """Parse a receipt's checkpoint note and its text (strictly; signatures not verified).

    Memoized on the exact bytes: receipts of one batch carry the same checkpoint, and both
    values are immutable. Raises MalformedError (not memoized) for a malformed note or text.
    """
    note = parse_note(checkpoint)
    return note, parse_checkpoint(note.text)


def _parsed_receipt(
    index: int, proof: tuple[bytes, ...], checkpoint: bytes, extra: bytes | None
) -> Receipt:
    """Build a Receipt from fields :func:`parse_receipt` has checked, then parse its note.

    The parser guarantees what ``Receipt.__post_init__`` checks of the index, the proof and
    ``extra``; the checkpoint note is parsed and checked here exactly as there. Raises
    MalformedError for a malformed note or checkpoint text.
    """
    note, parsed = _parse_checkpoint_note(checkpoint)
    receipt = _new(Receipt)
    _set(receipt, "index", index)
    _set(receipt, "proof", proof)
    _set(receipt, "checkpoint", checkpoint)
    _set(receipt, "extra", extra)
    _set(receipt, "_note", note)
    _set(receipt, "_parsed_checkpoint", parsed)
    return receipt


def format_receipt(receipt: Receipt) -> bytes:
    """Encode ``receipt`` as tlog-proof text. The inverse of :func:`parse_receipt`."""
    lines = [RECEIPT_HEADER]
    if receipt.extra is not None:
        lines.append(f"extra {encode_base64(receipt.extra)}")
    lines.append(f"index {receipt.index}")
    lines.extend(encode_base64(node) for node in receipt.proof)
    return ("\n".join(lines) + "\n\n").encode("ascii") + receipt.checkpoint


def verify_receipt(receipt: Receipt, entry: bytes, policy: Policy) -> Checkpoint:
    """Verify that ``entry`` is in the log at ``receipt.index``, as trusted by ``policy``.

    Checks, in order: the checkpoint's log signature and witness quorum
    (:func:`merkle.policy.verify_checkpoint`), then the RFC 6962 inclusion proof of
    ``leaf_hash(entry)`` at ``receipt.index`` against the checkpoint's root. The ``extra``
    data is not looked at. Returns the verified checkpoint.

    The checkpoint note was parsed, and found well-formed, when the receipt was made. Raises
    the errors of :func:`~merkle.policy.verify_checkpoint` (NoteError subclasses,
    PolicyError), then ProofError if the index is not below the tree size or the proof does
    not lead to the root.
    """
    checkpoint = receipt._parsed_checkpoint
    verify_parsed_checkpoint(policy, receipt._note, checkpoint)
    if receipt.index >= checkpoint.tree_size:
        raise ProofError(
            f"receipt index {receipt.index} is not below the tree size {checkpoint.tree_size}"
        )
    verify_inclusion(
        leaf_hash(entry), receipt.index, checkpoint.tree_size, receipt.proof, checkpoint.root_hash
    )
    return checkpoint
