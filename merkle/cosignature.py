"""C2SP tlog-cosignature, Ed25519 flavour: timestamped witness cosignatures (type 0x04).

A cosignature is a note signature line added to a checkpoint by a witness
(https://c2sp.org/tlog-cosignature)::

    — witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dl…

After the 4-byte key ID (computed with type byte 0x04) come an 8-byte big-endian POSIX
timestamp (at most 2**63 - 1) and a 64-byte Ed25519 signature over::

    cosignature/v1
    time 1679315147
    example.com/behind-the-sofa
    20852163
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

that is, two header lines then the whole checkpoint text (extension lines included).
Meaning: "as of this time, this is the largest consistent tree I have seen for this origin".

Keys. The public key is a vkey of type 0x04
(``witness.example/w1+<hex id>+<base64(0x04 || 32-byte key)>``), as in the specification. The
private key uses the Go note private key shape with type byte 0x04:
``PRIVATE+KEY+<name>+<hex id>+<base64(0x04 || 32-byte seed)>``, the key ID being computed with
type 0x04. This is the text that ``NewSignerForCosignatureV1`` of
github.com/transparency-dev/formats/note accepts; other witnesses (litewitness) keep their key
in an SSH agent and only publish the type-0x04 vkey, which :class:`CosignatureVerifier`
parses. A plain type-0x01 note key is refused here: the same Ed25519 key must not serve both
as a note key and as a cosigner key without its type-0x04 ID.

The verifier only accepts a cosignature over text that is a well-formed checkpoint, as the
message is defined over a checkpoint body.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from merkle.checkpoint import parse_checkpoint
from merkle.errors import MalformedError
from merkle.note import (
    ED25519_SIGNATURE_SIZE,
    KEY_TYPE_COSIGNATURE,
    Ed25519KeyVerifier,
    NoteSignature,
    VKey,
    check_key_name,
    encode_base64,
    format_vkey,
    key_id,
    load_ed25519_seed,
    parse_private_key,
)

__all__ = [
    "COSIGNATURE_SIZE",
    "MAX_TIMESTAMP",
    "CosignatureSigner",
    "CosignatureVerifier",
    "TimestampedCosigner",
    "cosignature_message",
    "cosignature_timestamp",
]

MAX_TIMESTAMP = 2**63 - 1
"""Largest cosignature timestamp allowed by tlog-cosignature ("MUST NOT exceed 2^63 - 1")."""

TIMESTAMP_SIZE = 8
COSIGNATURE_SIZE = TIMESTAMP_SIZE + ED25519_SIGNATURE_SIZE
"""Bytes after the key ID in an Ed25519 cosignature: timestamp (8) || signature (64)."""

_MLDSA44_COSIGNATURE_SIZE = TIMESTAMP_SIZE + 2420
_HEADER = b"cosignature/v1\ntime "
_timestamp = struct.Struct(">Q")


def _check_timestamp(timestamp: int) -> None:
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise MalformedError(f"cosignature timestamp must be an int in 0..{MAX_TIMESTAMP}")


@lru_cache(maxsize=256)
def _is_checkpoint(message: bytes) -> bool:
    """Report whether ``message`` is well-formed UTF-8 checkpoint text.

    Memoized: one checkpoint is usually checked once for every cosignature it carries.
    """
    try:
        parse_checkpoint(message.decode("utf-8"))
    except (MalformedError, UnicodeDecodeError):
        return False
    return True


def _message(checkpoint_text: bytes, timestamp: int) -> bytes:
    return _HEADER + str(timestamp).encode("ascii") + b"\n" + checkpoint_text


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    """Return the message an Ed25519 cosignature signs.

    tlog-cosignature "Ed25519 signed message": ``cosignature/v1\\n``, ``time <timestamp>\\n``
    (decimal, no leading zeros) and the whole checkpoint text, final newline included.

    Requires a well-formed checkpoint text and ``0 <= timestamp <= 2**63 - 1``; raises
    MalformedError otherwise.
    """
    _check_timestamp(timestamp)
    parse_checkpoint(checkpoint_text)
    return _message(checkpoint_text.encode("utf-8"), timestamp)


def cosignature_timestamp(signature: NoteSignature) -> int:
    """Return the timestamp (POSIX seconds) carried by a cosignature.

    Accepts the Ed25519 (8 + 64 bytes) and ML-DSA-44 (8 + 2420 bytes) ``timestamped_signature``
    layouts; the signature itself is not verified. For example the C2SP example line
    ``— witness.example.com/w1 jWbPPwAAAABkGFDL...`` carries 1679315147.

    Raises MalformedError for another length or a timestamp above 2**63 - 1.
    """
    raw = signature.signature
    if len(raw) not in (COSIGNATURE_SIZE, _MLDSA44_COSIGNATURE_SIZE):
        raise MalformedError(
            f"cosignature is {len(raw)} bytes after the key ID; expected {COSIGNATURE_SIZE} "
            "(timestamp and Ed25519 signature)"
        )
    (timestamp,) = _timestamp.unpack_from(raw)
    if timestamp > MAX_TIMESTAMP:
        raise MalformedError(f"cosignature timestamp {timestamp} is above 2**63 - 1")
    return int(timestamp)


class CosignatureVerifier(Ed25519KeyVerifier):
    """Verifier of Ed25519 cosignatures (type 0x04) by one witness key.

    Key name, key ID (computed with type byte 0x04), vkey, equality and the loaded key come
    from :class:`merkle.note.Ed25519KeyVerifier`; ``from_vkey`` takes a type-0x04 vkey, e.g.
    ``remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6...``.
    """

    __slots__ = ()

    key_type = KEY_TYPE_COSIGNATURE
    _kind = "Ed25519 cosignature key"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Report whether ``signature`` (timestamp || Ed25519 signature) cosigns ``message``.

        ``message`` is the checkpoint text; false when it is not a well-formed checkpoint, when
        the signature is not 72 bytes or its timestamp exceeds 2**63 - 1.
        """
        if len(signature) != COSIGNATURE_SIZE:
            return False
        (timestamp,) = _timestamp.unpack_from(signature)
        if timestamp > MAX_TIMESTAMP:
            return False
        if not _is_checkpoint(message):
            return False
        try:
            self._key.verify(signature[TIMESTAMP_SIZE:], _message(message, timestamp))
        except InvalidSignature:
            return False
        return True


class CosignatureSigner:
    """A witness's cosigning key (type 0x04): signs checkpoints at a given timestamp.

    The module has no clock: the caller passes the timestamp. ``repr`` shows only the name and
    key ID; :attr:`private_key` is secret.
    """

    __slots__ = ("_key", "_key_id", "_name", "_public_key", "_seed")

    def __init__(self, name: str, seed: bytes) -> None:
        """Make a cosigner from a 32-byte Ed25519 seed under key name ``name``.

        Raises MalformedError for an invalid name or seed length.
        """
        check_key_name(name)
        self._key: Ed25519PrivateKey = load_ed25519_seed(seed)
        self._seed = seed
        self._name = name
        self._public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._key_id = key_id(name, KEY_TYPE_COSIGNATURE, self._public_key)

    @classmethod
    def from_private_key(cls, text: str) -> CosignatureSigner:
        """Parse ``PRIVATE+KEY+<name>+<hex id>+<base64(0x04 || seed)>`` (see module docs).

        Raises MalformedError (without echoing the key) for a wrong shape, another key type, a
        seed that is not 32 bytes or a key ID that does not match.
        """
        name, seed = parse_private_key(text, KEY_TYPE_COSIGNATURE)
        return cls(name, seed)

    @classmethod
    def generate(cls, name: str) -> CosignatureSigner:
        """Make a cosigner with a fresh random key. Raises MalformedError for a bad name."""
        check_key_name(name)
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @property
    def name(self) -> str:
        """The cosigner's key name."""
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID (computed with type byte 0x04)."""
        return self._key_id

    @property
    def private_key(self) -> str:
        """The private key text ``PRIVATE+KEY+...`` (secret: never log it)."""
        material = encode_base64(bytes((KEY_TYPE_COSIGNATURE,)) + self._seed)
        return f"PRIVATE+KEY+{self._name}+{self._key_id.hex()}+{material}"

    @property
    def vkey(self) -> str:
        """The type-0x04 vkey of the matching public key."""
        return format_vkey(VKey(self._name, KEY_TYPE_COSIGNATURE, self._public_key))

    def verifier(self) -> CosignatureVerifier:
        """Return the verifier of this key."""
        return CosignatureVerifier(self._name, self._public_key)

    def sign_at(self, checkpoint_text: str, timestamp: int) -> NoteSignature:
        """Cosign ``checkpoint_text`` as of ``timestamp``; return the signature line's value.

        Requires a well-formed checkpoint text and ``0 <= timestamp <= 2**63 - 1``; raises
        MalformedError otherwise.
        """
        message = cosignature_message(checkpoint_text, timestamp)
        signature = _timestamp.pack(timestamp) + self._key.sign(message)
        return NoteSignature(self._name, self._key_id, signature)

    def signer_at(self, timestamp: int) -> TimestampedCosigner:
        """Return a :class:`~merkle.note.Signer` that cosigns at ``timestamp``.

        For :func:`merkle.note.add_signatures`. Raises MalformedError for a timestamp out of
        ``0..2**63 - 1``.
        """
        _check_timestamp(timestamp)
        return TimestampedCosigner(self, timestamp)

    def __repr__(self) -> str:
        return f"CosignatureSigner(name={self._name!r}, key_id={self._key_id.hex()!r})"


class TimestampedCosigner:
    """A :class:`~merkle.note.Signer` cosigning checkpoints at one fixed timestamp."""

    __slots__ = ("_cosigner", "_timestamp")

    def __init__(self, cosigner: CosignatureSigner, timestamp: int) -> None:
        """Bind ``cosigner`` to ``timestamp``. Raises MalformedError for a bad timestamp."""
        _check_timestamp(timestamp)
        self._cosigner = cosigner
        self._timestamp = timestamp

    @property
    def name(self) -> str:
        """The cosigner's key name."""
        return self._cosigner.name

    @property
    def key_id(self) -> bytes:
        """The cosigner's 4-byte key ID."""
        return self._cosigner.key_id

    @property
    def timestamp(self) -> int:
        """The timestamp every signature made by this signer carries."""
        return self._timestamp

    def sign(self, message: bytes) -> bytes:
        """Cosign checkpoint text ``message``; return timestamp || Ed25519 signature.

        Raises MalformedError if ``message`` is not a well-formed UTF-8 checkpoint text.
        """
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedError("cosigned message is not UTF-8 checkpoint text") from None
        return self._cosigner.sign_at(text, self._timestamp).signature

    def __repr__(self) -> str:
        return f"TimestampedCosigner({self._cosigner!r}, timestamp={self._timestamp})"

