"""C2SP transparency-log checkpoints: the signed tree head (https://c2sp.org/tlog-checkpoint).

A checkpoint is the text of a signed note::

    example.com/behind-the-sofa
    20852163
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

1. the origin, a non-empty line naming the log (by convention a schema-less URL, which is
   also the key name of the log's signature);
2. the tree size, ASCII decimal without sign or leading zeros (``0`` for the empty tree),
   at most 2**63 - 1;
3. the root hash, standard base64 with padding, exactly 32 bytes;
4. optional, discouraged extension lines, each non-empty.

Parsing is strict and canonical: ``format_checkpoint(parse_checkpoint(t)) == t`` for every
accepted ``t``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from merkle.errors import MalformedError, UnknownKeyError, UnverifiedNoteError
from merkle.hashing import HASH_SIZE
from merkle.note import (
    Note,
    NoteSignature,
    Verifier,
    decode_base64,
    encode_base64,
    parse_note,
    verify_note,
)
from merkle.tree import MAX_TREE_SIZE

__all__ = [
    "Checkpoint",
    "format_checkpoint",
    "open_checkpoint",
    "parse_checkpoint",
    "parse_decimal",
]

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_MAX_DIGITS = len(str(MAX_TREE_SIZE))
_BAD_LINE_CHAR = re.compile("[\x00-\x1f\ud800-\udfff]")


def parse_decimal(text: str, *, what: str, maximum: int = MAX_TREE_SIZE) -> int:
    """Parse a canonical ASCII decimal: no sign, no spaces, no leading zeros, ``0..maximum``.

    Rejects everything Python's ``int()`` would forgive: ``"+5"``, ``" 5"``, ``"05"``,
    ``"5_000"`` and non-ASCII digits such as ``"٥"``. ``what`` names the field in errors.

    Raises MalformedError.
    """
    if not _DECIMAL.fullmatch(text):
        raise MalformedError(
            f"{what} {text!r} is not a canonical decimal (ASCII digits, no sign, "
            "no leading zeros)"
        )
    if len(text) > _MAX_DIGITS or int(text) > maximum:
        raise MalformedError(f"{what} {text} is larger than {maximum}")
    return int(text)


def _check_line(line: str, *, what: str) -> None:
    if not line:
        raise MalformedError(f"{what} is empty")
    bad = _BAD_LINE_CHAR.search(line)
    if bad is not None:
        raise MalformedError(f"{what} contains a forbidden character {bad.group()!r}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, tree size, root hash and optional extension lines.

    Requires a non-empty origin and extension lines without newline or control characters,
    ``0 <= tree_size <= 2**63 - 1`` and a 32-byte root hash; raises MalformedError otherwise.
    """

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, what="checkpoint origin")
        if (
            type(self.tree_size) is not int
            or not 0 <= self.tree_size <= MAX_TREE_SIZE
        ):
            raise MalformedError(f"tree size must be an int in 0..{MAX_TREE_SIZE}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise MalformedError(f"root hash must be exactly {HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise MalformedError("checkpoint extensions must be a tuple of lines")
        for number, line in enumerate(self.extensions, 1):
            _check_line(line, what=f"checkpoint extension line {number}")


_new_checkpoint = object.__new__
_set = object.__setattr__


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint note text (the note text only, without signatures).

    tlog-checkpoint "Note text". Example::

        parse_checkpoint("example.com/log\\n0\\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\\n")

    Raises MalformedError for text without a final newline, fewer than three lines, an empty
    origin or extension line, a non-canonical or too large tree size, or a root hash that is
    not canonical base64 of exactly 32 bytes.
    """
    if not text.endswith("\n"):
        raise MalformedError("checkpoint text does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedError(
            f"checkpoint has {len(lines)} lines; it needs origin, tree size and root hash"
        )
    origin, size_line, root_line, *extensions = lines
    _check_line(origin, what="checkpoint origin")
    tree_size = parse_decimal(size_line, what="checkpoint tree size")
    root_hash = decode_base64(root_line, what="checkpoint root hash")
    if len(root_hash) != HASH_SIZE:
        raise MalformedError(
            f"checkpoint root hash is {len(root_hash)} bytes, expected {HASH_SIZE}"
        )
    for number, line in enumerate(extensions, 1):
        _check_line(line, what=f"checkpoint extension line {number}")
    # Every field is checked above as ``Checkpoint.__post_init__`` would: build it directly.
    checkpoint = _new_checkpoint(Checkpoint)
    _set(checkpoint, "origin", origin)
    _set(checkpoint, "tree_size", tree_size)
    _set(checkpoint, "root_hash", root_hash)
    _set(checkpoint, "extensions", tuple(extensions))
    return checkpoint


def format_checkpoint(checkpoint: Checkpoint) -> str:
    """Encode ``checkpoint`` as note text: origin, size, base64 root, extension lines.

    The inverse of :func:`parse_checkpoint`.
    """
    lines = [
        checkpoint.origin,
        str(checkpoint.tree_size),
        encode_base64(checkpoint.root_hash),
        *checkpoint.extensions,
    ]
    return "\n".join(lines) + "\n"


def open_checkpoint(
    data: bytes, log_verifier: Verifier, extra_verifiers: Iterable[Verifier] = ()
) -> tuple[Checkpoint, Note, tuple[NoteSignature, ...]]:
    """Verify a signed checkpoint from the log whose key is ``log_verifier``.

    tlog-checkpoint "Signatures" and signed-note "Signatures": the note must carry a valid
    signature by the log key, whose key name must equal the checkpoint origin. Signatures by
    ``extra_verifiers`` (for example witnesses) are verified too and returned with the log's;
    signatures by other keys are ignored.

    Returns the checkpoint, the note and the verified signatures (log signature included).

    Checked in this order; raises MalformedError for a malformed note or checkpoint text;
    UnknownKeyError if the origin is not the log key's name; SignatureError if a known key's
    signature fails; UnverifiedNoteError if the log's signature is missing.
    """
    note = parse_note(data)
    checkpoint = parse_checkpoint(note.text)
    if checkpoint.origin != log_verifier.name:
        raise UnknownKeyError(
            f"checkpoint origin {checkpoint.origin!r} does not match the log key name "
            f"{log_verifier.name!r}"
        )
    missing = (
        f"checkpoint is not signed by the log key {log_verifier.name}+"
        f"{log_verifier.key_id.hex()}"
    )
    try:
        verified = verify_note(note, [log_verifier, *extra_verifiers])
    except UnverifiedNoteError:
        raise UnverifiedNoteError(missing) from None
    log_pair = (log_verifier.name, log_verifier.key_id)
    if not any((s.name, s.key_id) == log_pair for s in verified):
        raise UnverifiedNoteError(missing)
    return checkpoint, note, verified
