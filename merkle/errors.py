"""The one error hierarchy of :mod:`merkle`.

Everything this package raises on bad input or failed verification derives from
:class:`MerkleError`::

    MerkleError
    ├── MalformedError          input does not follow its format (also a ValueError)
    ├── ProofError              a Merkle proof did not verify; carries expected and computed roots
    │   └── InconsistencyError  two tree heads cannot both be true; carries both notes and the proof
    ├── NoteError               a signed note could not be trusted
    │   ├── UnverifiedNoteError no known key signed the note
    │   ├── UnknownKeyError     a key name / key ID pair is not among the known keys
    │   └── SignatureError      a known key's signature does not verify
    └── PolicyError             a checkpoint does not satisfy a tlog-policy quorum

Verification functions raise and never return ``False`` (like ``cryptography``'s
``InvalidSignature``), so a forgotten check cannot silently pass.
"""

from __future__ import annotations

from collections.abc import Sequence


class MerkleError(Exception):
    """Base of every error raised by :mod:`merkle`."""


class MalformedError(MerkleError, ValueError):
    """The input does not follow its format (a parse failure or an out-of-range argument)."""


class ProofError(MerkleError):
    """A Merkle proof did not verify.

    ``expected`` is the root the caller trusted and ``computed`` the root the proof leads to,
    when the failure got that far (``None`` for proofs rejected for their shape alone).
    """

    def __init__(
        self,
        message: str,
        *,
        expected: bytes | None = None,
        computed: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.expected = expected
        self.computed = computed


class InconsistencyError(ProofError):
    """Two tree heads of one log cannot both be honest.

    Carries the evidence: both signed notes (when known), their sizes, and the proof tried.
    """

    def __init__(
        self,
        message: str,
        *,
        first_note: bytes | None = None,
        second_note: bytes | None = None,
        first_size: int | None = None,
        second_size: int | None = None,
        proof: Sequence[bytes] = (),
        expected: bytes | None = None,
        computed: bytes | None = None,
    ) -> None:
        super().__init__(message, expected=expected, computed=computed)
        self.first_note = first_note
        self.second_note = second_note
        self.first_size = first_size
        self.second_size = second_size
        self.proof = tuple(proof)


class NoteError(MerkleError):
    """A signed note could not be trusted."""


class UnverifiedNoteError(NoteError):
    """No signature on the note is from a known key."""


class UnknownKeyError(NoteError):
    """A (key name, key ID) pair is not among the known keys."""


class SignatureError(NoteError):
    """A signature from a known key does not verify."""


class PolicyError(MerkleError):
    """A checkpoint's signatures do not satisfy the quorum of a tlog-policy."""
