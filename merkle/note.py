"""C2SP signed notes: text signed by one or more keys (https://c2sp.org/signed-note).

A signed note is UTF-8 text in which every line ends in a newline, a blank line, then one
signature line per signature::

    If you think cryptography is the answer to your problem,
    then you don't know what your problem is.

    — PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKv…

(the signature is shortened here; tests/test_merkle_note.py holds the full known answer).

A signature line is an em dash (U+2014), a space, the key name, a space and
``base64(key ID || signature)``. The text ends at the *last* blank line, includes its final
newline, and may itself contain blank lines. The key ID is the first four bytes of
``SHA-256(key name || 0x0A || signature type || public key)``.

Keys travel as text in the formats of golang.org/x/mod/sumdb/note:

* verifier key ("vkey"): ``<name>+<8 lowercase hex key ID>+<base64(type || public key)>``
* private key: ``PRIVATE+KEY+<name>+<8 lowercase hex key ID>+<base64(type || 32-byte seed)>``

This module implements signature type 0x01 (Ed25519 over the note text). Type 0x04
(timestamped Ed25519 witness cosignatures) lives in :mod:`merkle.cosignature`; both plug into
:func:`open_note` through the :class:`Verifier` protocol.

Limits: a note carries at most :data:`MAX_SIGNATURES` (100) signature lines, well above the 16
the specification requires verifiers to accept; more are rejected as malformed so that a note
cannot make a verifier spend unbounded time.

Every parser here is strict: invalid UTF-8, control characters other than newline, a missing
final newline, non-canonical base64, bad key names and mismatched key IDs all raise
:class:`~merkle.errors.MalformedError`. Error messages never contain private key material.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from merkle.errors import MalformedError, SignatureError, UnverifiedNoteError

__all__ = [
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SEED_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "KEY_TYPE_COSIGNATURE",
    "KEY_TYPE_ED25519",
    "MAX_SIGNATURES",
    "Ed25519KeyVerifier",
    "Ed25519Signer",
    "Ed25519Verifier",
    "Note",
    "NoteSignature",
    "Signer",
    "VKey",
    "Verifier",
    "VerifierIndex",
    "add_signatures",
    "check_key_name",
    "decode_base64",
    "encode_base64",
    "format_note",
    "format_signature_lines",
    "format_vkey",
    "generate_key",
    "index_verifiers",
    "key_id",
    "load_ed25519_public_key",
    "load_ed25519_seed",
    "merge_signatures",
    "open_note",
    "parse_note",
    "parse_private_key",
    "parse_signature_lines",
    "parse_verifier",
    "parse_vkey",
    "sign_note",
    "verify_note",
]

KEY_TYPE_ED25519 = 0x01
"""Signature type byte of plain Ed25519 note signatures (signed-note, "Ed25519 signatures")."""

KEY_TYPE_COSIGNATURE = 0x04
"""Signature type byte of timestamped Ed25519 cosignatures (c2sp.org/tlog-cosignature)."""

MAX_SIGNATURES = 100
"""Most signature lines accepted in one note (the specification requires at least 16)."""

ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SEED_SIZE = 32
ED25519_SIGNATURE_SIZE = 64

KEY_ID_SIZE = 4
_SIGNATURE_PREFIX = "— "  # U+2014 EM DASH, U+0020 SPACE
_SIGNATURE_PREFIX_LENGTH = len(_SIGNATURE_PREFIX)
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_HEX_ID = re.compile(r"[0-9a-f]{8}")
# Controls below U+0020 other than newline; lone surrogates cannot be encoded as UTF-8.
_BAD_TEXT_CHAR = re.compile("[\x00-\x09\x0b-\x1f\ud800-\udfff]")
# The same controls as bytes, for a fast C-speed check (bytes.translate) before the regex.
_CONTROL_BYTES = bytes(b for b in range(0x20) if b != 0x0A)
# Key names: no Unicode space (``\s`` is str.isspace), no plus, no control, no surrogate.
_BAD_NAME_CHAR = re.compile("[\\s+\x00-\x1f\ud800-\udfff]")
_sha256 = hashlib.sha256


# --------------------------------------------------------------------------- helpers


def decode_base64(value: str, *, what: str) -> bytes:
    """Decode standard base64 (RFC 4648 §4) strictly and return the bytes.

    Accepts only the canonical encoding: the standard alphabet, correct ``=`` padding, zero
    padding bits and nothing else (no whitespace, no URL-safe characters, nothing after the
    padding). ``what`` names the field in the error message. Example: ``"QQ=="`` gives
    ``b"A"``; ``"QR=="``, ``"QQ"`` and ``"QQ==\n"`` are refused.

    Raises MalformedError for anything that does not re-encode to exactly ``value``.
    """
    try:
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedError(f"{what}: not valid standard base64") from None
    if binascii.b2a_base64(raw, newline=False) != value.encode("ascii"):
        raise MalformedError(f"{what}: non-canonical base64")
    return raw


def encode_base64(raw: bytes) -> str:
    """Encode ``raw`` as standard base64 with padding (RFC 4648 §4)."""
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def check_key_name(name: str) -> None:
    """Check that ``name`` is a valid signed-note key name.

    signed-note "Format": a key name is non-empty and contains no Unicode space and no plus
    (U+002B). Control characters and lone surrogates are rejected as well, since a note cannot
    carry them.

    Raises MalformedError describing the problem.
    """
    if not isinstance(name, str) or not name:
        raise MalformedError("key name must be a non-empty string")
    bad = _BAD_NAME_CHAR.search(name)
    if bad is not None:
        raise MalformedError(
            f"key name {name!r} contains a forbidden character {bad.group()!r} "
            "(spaces, '+' and control characters are not allowed)"
        )


def _check_controls(encoded: bytes, text: str, *, what: str) -> None:
    """Raise MalformedError if ``encoded`` (``text`` as UTF-8) has a control other than \\n."""
    if len(encoded.translate(None, _CONTROL_BYTES)) != len(encoded):
        bad = _BAD_TEXT_CHAR.search(text)
        raise MalformedError(
            f"{what} contains a forbidden control character {bad.group() if bad else ''!r}"
        )


def _check_text(text: str, *, what: str) -> None:
    """Check note text rules: non-empty, ends in newline, no control character but newline."""
    if not text:
        raise MalformedError(f"{what} is empty")
    if not text.endswith("\n"):
        raise MalformedError(f"{what} does not end with a newline")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedError(f"{what} has a lone surrogate, which UTF-8 cannot encode") from None
    _check_controls(encoded, text, what=what)


def key_id(name: str, key_type: int, public_key: bytes) -> bytes:
    """Return the 4-byte key ID of a key: ``SHA-256(name || 0x0A || key_type || public_key)[:4]``.

    signed-note "Signatures". Example: the Ed25519 key of ``PeterNeumann`` in the Go
    documentation has key ID ``c74f20a3``.

    Requires a valid key name and ``0 <= key_type <= 255``; raises MalformedError otherwise.
    """
    check_key_name(name)
    if not 0 <= key_type <= 0xFF:
        raise MalformedError(f"key type {key_type} is not a byte")
    return _sha256(name.encode("utf-8") + b"\n" + bytes((key_type,)) + public_key).digest()[
        :KEY_ID_SIZE
    ]


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line of a note: key name, 4-byte key ID and the signature bytes after it.

    ``signature`` holds the bytes that follow the key ID (64 bytes for Ed25519, 72 for a
    cosignature: 8-byte timestamp || Ed25519 signature).

    Raises MalformedError for an invalid key name, a key ID that is not 4 bytes or an empty
    signature.
    """

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.key_id, bytes) or len(self.key_id) != KEY_ID_SIZE:
            raise MalformedError("key ID must be exactly 4 bytes")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise MalformedError("signature must be non-empty bytes")

    def format_line(self) -> str:
        """Return the signature line ``— <name> <base64(key ID || signature)>\\n``."""
        return f"{_SIGNATURE_PREFIX}{self.name} {encode_base64(self.key_id + self.signature)}\n"


@dataclass(frozen=True, slots=True)
class Note:
    """A note: its text (final newline included) and its signature lines, in order.

    Requires non-empty text ending in a newline with no control character other than newline,
    and 1 to :data:`MAX_SIGNATURES` signatures; raises MalformedError otherwise.
    """

    text: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        _check_text(self.text, what="note text")
        if not isinstance(self.signatures, tuple):
            raise MalformedError("note signatures must be a tuple")
        if not self.signatures:
            raise MalformedError("a note needs at least one signature")
        if len(self.signatures) > MAX_SIGNATURES:
            raise MalformedError(
                f"note has {len(self.signatures)} signatures, more than the limit of "
                f"{MAX_SIGNATURES}"
            )


_new = object.__new__
_set = object.__setattr__
# Key names that passed check_key_name: a verifier sees the same few names on every note.
_checked_names: set[str] = set()
_CHECKED_NAMES_LIMIT = 1024


def _parsed_signature(name: str, key_id: bytes, signature: bytes) -> NoteSignature:
    """Build a NoteSignature from fields the parser has checked, skipping re-validation.

    Parsing is the hot path of verification; the caller guarantees what ``__post_init__``
    would check (valid name, 4-byte key ID, non-empty signature).
    """
    value = _new(NoteSignature)
    _set(value, "name", name)
    _set(value, "key_id", key_id)
    _set(value, "signature", signature)
    return value


def _parsed_note(text: str, signatures: tuple[NoteSignature, ...]) -> Note:
    """Build a Note from a text and signatures the parser has checked (see above)."""
    value = _new(Note)
    _set(value, "text", text)
    _set(value, "signatures", signatures)
    return value


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise MalformedError(
            f"signature line {number} does not start with an em dash (U+2014) and a space"
        )
    name, space, encoded = line[_SIGNATURE_PREFIX_LENGTH:].partition(" ")
    if not space:
        raise MalformedError(f"signature line {number} has no space between key name and signature")
    try:
        raw = decode_base64(encoded, what="signature")
    except MalformedError as exc:
        raise MalformedError(f"signature line {number}: {exc}") from None
    if len(raw) <= KEY_ID_SIZE:
        raise MalformedError(f"signature line {number} is shorter than a key ID plus a signature")
    if name not in _checked_names:
        check_key_name(name)
        if len(_checked_names) >= _CHECKED_NAMES_LIMIT:
            _checked_names.clear()
        _checked_names.add(name)
    # Checked: the name just above, a 4-byte key ID and a non-empty signature by the length.
    return _parsed_signature(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:])


def _parse_signature_block(block: str) -> tuple[NoteSignature, ...]:
    """Parse newline-terminated signature lines (the part of a note after the blank line)."""
    if not block:
        raise MalformedError("note has no signature lines after the blank line")
    if not block.endswith("\n"):
        raise MalformedError("the last signature line does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError(
            f"note has {len(lines)} signature lines, more than the limit of {MAX_SIGNATURES}"
        )
    return tuple([_parse_signature_line(line, i) for i, line in enumerate(lines, 1)])


def _decode_note_bytes(data: bytes, *, what: str) -> str:
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"{what} is not valid UTF-8 (byte offset {exc.start})") from None
    except AttributeError:
        raise MalformedError(f"{what} must be bytes") from None
    _check_controls(data, decoded, what=what)
    return decoded


def parse_note(data: bytes) -> Note:
    """Parse a signed note without verifying any signature.

    signed-note "Format". The text is everything up to and including the newline before the
    last blank line; every following line must be a signature line. At most
    :data:`MAX_SIGNATURES` signature lines are accepted.

    Raises MalformedError for invalid UTF-8, a control character other than newline, no blank
    line, a missing final newline, a bad signature line (prefix, key name, base64, length) or
    too many signatures.
    """
    decoded = _decode_note_bytes(data, what="note")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise MalformedError("note has no blank line separating text and signatures")
    signatures = _parse_signature_block(decoded[split + 2 :])
    # The text is non-empty, ends in a newline and was checked with the whole note; the
    # signature block holds 1 to MAX_SIGNATURES checked signatures.
    return _parsed_note(decoded[: split + 1], signatures)


def format_note(note: Note) -> bytes:
    """Encode ``note`` as signed-note bytes: text, blank line, one line per signature.

    The inverse of :func:`parse_note`: ``parse_note(format_note(n)) == n``.
    """
    return (note.text + "\n" + "".join(s.format_line() for s in note.signatures)).encode("utf-8")


def parse_signature_lines(data: bytes) -> tuple[NoteSignature, ...]:
    """Parse a block of signature lines (for example a tlog-witness ``add-checkpoint`` answer).

    Each line is ``— <name> <base64(key ID || signature)>\\n``; 1 to :data:`MAX_SIGNATURES`
    lines. Raises MalformedError as :func:`parse_note` does.
    """
    return _parse_signature_block(_decode_note_bytes(data, what="signature lines"))


def format_signature_lines(signatures: Iterable[NoteSignature]) -> bytes:
    """Encode signatures as newline-terminated signature lines (no blank line, no text)."""
    return "".join(s.format_line() for s in signatures).encode("utf-8")


# --------------------------------------------------------------------------- keys


class Verifier(Protocol):
    """A known public key: its name, its 4-byte key ID, and a check of its signatures."""

    @property
    def name(self) -> str:
        """The key name, as it appears on signature lines."""
        ...

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID."""
        ...

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Report whether ``signature`` (the bytes after the key ID) signs ``message``."""
        ...


class Signer(Protocol):
    """A private key able to sign note text."""

    @property
    def name(self) -> str:
        """The key name written on the signature line."""
        ...

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID written before the signature."""
        ...

    def sign(self, message: bytes) -> bytes:
        """Return the signature of ``message`` (the bytes that follow the key ID)."""
        ...


@dataclass(frozen=True, slots=True)
class VKey:
    """A decoded verifier key: key name, signature type byte and public key bytes.

    Raises MalformedError for an invalid key name or a type that is not a byte.
    """

    name: str
    key_type: int
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not 0 <= self.key_type <= 0xFF:
            raise MalformedError(f"key type {self.key_type} is not a byte")

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID of this key."""
        return key_id(self.name, self.key_type, self.public_key)


def parse_vkey(vkey: str) -> VKey:
    """Parse a verifier key ``<name>+<8 lowercase hex key ID>+<base64(type || public key)>``.

    signed-note "Verifier keys"; for example
    ``PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW``. The key ID must
    equal the one computed from the name, type and key. The key length is not checked here
    (it depends on the type; see :func:`parse_verifier`).

    Raises MalformedError for a wrong shape, invalid name, non-canonical hex or base64, an empty
    key or a mismatched key ID.
    """
    if not isinstance(vkey, str):
        raise MalformedError("vkey must be a string")
    name, plus, rest = vkey.partition("+")
    hex_id, plus2, encoded = rest.partition("+")
    if not plus or not plus2:
        raise MalformedError("vkey must have the form <name>+<hex key ID>+<base64 key>")
    check_key_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise MalformedError("vkey key ID must be exactly 8 lowercase hexadecimal digits")
    raw = decode_base64(encoded, what="vkey key")
    if len(raw) < 2:
        raise MalformedError("vkey key must hold a type byte and a public key")
    parsed = VKey(name, raw[0], raw[1:])
    if parsed.key_id.hex() != hex_id:
        raise MalformedError(
            f"vkey key ID {hex_id} does not match its name and key ({parsed.key_id.hex()})"
        )
    return parsed


def format_vkey(key: VKey) -> str:
    """Encode ``key`` as ``<name>+<hex key ID>+<base64(type || public key)>``."""
    return (
        f"{key.name}+{key.key_id.hex()}+"
        f"{encode_base64(bytes((key.key_type,)) + key.public_key)}"
    )


def parse_private_key(text: str, expected_type: int) -> tuple[str, bytes]:
    """Parse a private key ``PRIVATE+KEY+<name>+<hex id>+<base64(type || seed)>``.

    The Go sumdb/note signer key format. Returns ``(key name, 32-byte Ed25519 seed)``; the
    seed is secret. Requires the type byte to be ``expected_type``, the seed to be 32 bytes and
    the key ID to match the public key derived from the seed.

    Raises MalformedError; its message never includes the key material.
    """
    if not isinstance(text, str) or not text.startswith(_PRIVATE_PREFIX):
        raise MalformedError("private key must start with PRIVATE+KEY+")
    name, plus, rest = text[len(_PRIVATE_PREFIX) :].partition("+")
    hex_id, plus2, encoded = rest.partition("+")
    if not plus or not plus2:
        raise MalformedError(
            "private key must have the form PRIVATE+KEY+<name>+<hex key ID>+<base64 key>"
        )
    check_key_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise MalformedError("private key ID must be exactly 8 lowercase hexadecimal digits")
    try:
        raw = decode_base64(encoded, what="private key")
    except MalformedError:
        raise MalformedError("private key material is not canonical standard base64") from None
    if len(raw) != 1 + ED25519_SEED_SIZE:
        raise MalformedError("private key material must be a type byte and a 32-byte seed")
    if raw[0] != expected_type:
        raise MalformedError(
            f"private key has type 0x{raw[0]:02x}, expected 0x{expected_type:02x}"
        )
    seed = raw[1:]
    public = _public_from_seed(seed)
    if key_id(name, expected_type, public).hex() != hex_id:
        raise MalformedError("private key ID does not match its name and key")
    return name, seed


def _public_from_seed(seed: bytes) -> bytes:
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def load_ed25519_public_key(public_key: bytes) -> Ed25519PublicKey:
    """Load a raw 32-byte Ed25519 public key. Raises MalformedError for a bad key."""
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise MalformedError("an Ed25519 public key is exactly 32 bytes")
    try:
        return Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise MalformedError("not a valid Ed25519 public key") from None


def load_ed25519_seed(seed: bytes) -> Ed25519PrivateKey:
    """Load a raw 32-byte Ed25519 seed. Raises MalformedError (without the seed) if bad."""
    if not isinstance(seed, bytes) or len(seed) != ED25519_SEED_SIZE:
        raise MalformedError("an Ed25519 seed is exactly 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


class Ed25519KeyVerifier(ABC):
    """The parts every Ed25519-based verifier shares: key name, key ID and the loaded key.

    Subclasses fix the signed-note key type (:attr:`key_type`, part of the key ID) and say
    what a signature is (:meth:`verify`). The public key is loaded once, so verifying costs
    one Ed25519 verification. Two verifiers are equal when they are of the same class with
    the same name and key (that is, the same vkey).
    """

    __slots__ = ("_key", "_key_id", "_name", "_public_key")

    key_type: ClassVar[int]
    _kind: ClassVar[str]

    def __init__(self, name: str, public_key: bytes) -> None:
        """Make a verifier for ``public_key`` (32 bytes) under key name ``name``.

        Raises MalformedError for an invalid name or key.
        """
        self._key = load_ed25519_public_key(public_key)
        self._name = name
        self._public_key = public_key
        self._key_id = key_id(name, self.key_type, public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        """Parse a vkey of this class's key type, e.g. ``PeterNeumann+c74f20a3+ARpc2Qc...``.

        Raises MalformedError for a malformed vkey, another key type or a key that is not
        32 bytes.
        """
        parsed = parse_vkey(vkey)
        if parsed.key_type != cls.key_type:
            raise MalformedError(
                f"vkey has type 0x{parsed.key_type:02x}, expected 0x{cls.key_type:02x} "
                f"({cls._kind})"
            )
        return cls(parsed.name, parsed.public_key)

    @property
    def name(self) -> str:
        """The key name."""
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID (computed with this class's key type)."""
        return self._key_id

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def vkey(self) -> str:
        """The vkey text of this key."""
        return format_vkey(VKey(self._name, self.key_type, self._public_key))

    @abstractmethod
    def verify(self, message: bytes, signature: bytes) -> bool:
        """Report whether ``signature`` (the bytes after the key ID) signs ``message``."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Ed25519KeyVerifier)
        return self._name == other._name and self._public_key == other._public_key

    def __hash__(self) -> int:
        return hash((self._name, self._public_key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vkey!r})"


class Ed25519Verifier(Ed25519KeyVerifier):
    """Verifier of signed-note Ed25519 signatures (type 0x01) by one public key."""

    __slots__ = ()

    key_type = KEY_TYPE_ED25519
    _kind = "Ed25519 note key"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Report whether ``signature`` is a valid Ed25519 signature of ``message``."""
        if len(signature) != ED25519_SIGNATURE_SIZE:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Ed25519Signer:
    """Signer of signed-note Ed25519 signatures (type 0x01) with one private key.

    ``repr`` shows only the name and key ID; the private key text is available through
    :attr:`private_key` and must be kept secret.
    """

    __slots__ = ("_key", "_key_id", "_name", "_public_key", "_seed")

    def __init__(self, name: str, seed: bytes) -> None:
        """Make a signer from a 32-byte Ed25519 seed under key name ``name``.

        Raises MalformedError for an invalid name or seed length.
        """
        check_key_name(name)
        self._key = load_ed25519_seed(seed)
        self._seed = seed
        self._name = name
        self._public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._key_id = key_id(name, KEY_TYPE_ED25519, self._public_key)

    @classmethod
    def from_private_key(cls, text: str) -> Ed25519Signer:
        """Parse a Go-format private key ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>``.

        Example: ``PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz``.
        Raises MalformedError (without echoing the key) for a wrong shape, another key type, a
        seed that is not 32 bytes or a key ID that does not match.
        """
        name, seed = parse_private_key(text, KEY_TYPE_ED25519)
        return cls(name, seed)

    @classmethod
    def generate(cls, name: str) -> Ed25519Signer:
        """Make a signer with a fresh random key. Raises MalformedError for an invalid name."""
        check_key_name(name)
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @property
    def name(self) -> str:
        """The key name."""
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID."""
        return self._key_id

    @property
    def private_key(self) -> str:
        """The private key text ``PRIVATE+KEY+...`` (secret: never log it)."""
        material = encode_base64(bytes((KEY_TYPE_ED25519,)) + self._seed)
        return f"{_PRIVATE_PREFIX}{self._name}+{self._key_id.hex()}+{material}"

    @property
    def vkey(self) -> str:
        """The vkey of the matching public key."""
        return format_vkey(VKey(self._name, KEY_TYPE_ED25519, self._public_key))

    def verifier(self) -> Ed25519Verifier:
        """Return the verifier of this key."""
        return Ed25519Verifier(self._name, self._public_key)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"Ed25519Signer(name={self._name!r}, key_id={self._key_id.hex()!r})"


def generate_key(name: str) -> tuple[str, str]:
    """Generate an Ed25519 note key; return ``(private key text, vkey)``.

    Raises MalformedError for an invalid key name.
    """
    signer = Ed25519Signer.generate(name)
    return signer.private_key, signer.vkey


def parse_verifier(vkey: str) -> Verifier:
    """Parse a vkey into the verifier for its type.

    Type 0x01 gives an :class:`Ed25519Verifier`, type 0x04 a
    :class:`~merkle.cosignature.CosignatureVerifier`. Raises MalformedError for a malformed
    vkey or any other type.
    """
    parsed = parse_vkey(vkey)
    if parsed.key_type == KEY_TYPE_ED25519:
        return Ed25519Verifier(parsed.name, parsed.public_key)
    if parsed.key_type == KEY_TYPE_COSIGNATURE:
        # Imported here: merkle.cosignature builds on this module.
        from merkle.cosignature import CosignatureVerifier

        return CosignatureVerifier(parsed.name, parsed.public_key)
    raise MalformedError(
        f"vkey type 0x{parsed.key_type:02x} is not supported (only 0x01 and 0x04 are)"
    )


# --------------------------------------------------------------------------- sign and open


def _signatures_by(signers: Iterable[Signer], message: bytes) -> list[NoteSignature]:
    made: list[NoteSignature] = []
    seen: set[tuple[str, bytes]] = set()
    for signer in signers:
        pair = (signer.name, signer.key_id)
        if pair in seen:
            raise MalformedError(
                f"two signers share key name {signer.name!r} and key ID {signer.key_id.hex()}"
            )
        seen.add(pair)
        made.append(NoteSignature(signer.name, signer.key_id, signer.sign(message)))
    return made


def _replace_signatures(note: Note, new: list[NoteSignature]) -> Note:
    replaced = {(s.name, s.key_id) for s in new}
    kept = [s for s in note.signatures if (s.name, s.key_id) not in replaced]
    return Note(note.text, (*kept, *new))


def sign_note(text: str, signers: Iterable[Signer]) -> bytes:
    """Sign ``text`` with every signer and return the signed note bytes.

    Requires note text (non-empty, ending in a newline, no control character but newline) and
    at least one signer; signature lines follow the signers' order.

    Raises MalformedError for invalid text, no signer, or two signers with the same key.
    """
    _check_text(text, what="note text")
    signatures = _signatures_by(signers, text.encode("utf-8"))
    return format_note(Note(text, tuple(signatures)))


def add_signatures(note: bytes, signers: Iterable[Signer]) -> bytes:
    """Add the signers' signatures to an existing signed note and return the new note bytes.

    Existing signature lines are kept in order, except those by a key (name and key ID) that
    signs again: its old line is dropped and the new one appended, as Go's ``note.Sign`` does.
    Existing signatures are not verified here: open the note first.

    Raises MalformedError for a malformed note, two signers with the same key or a result with
    more than :data:`MAX_SIGNATURES` signatures.
    """
    parsed = parse_note(note)
    new = _signatures_by(signers, parsed.text.encode("utf-8"))
    return format_note(_replace_signatures(parsed, new))


def merge_signatures(note: bytes, signatures: Iterable[NoteSignature]) -> bytes:
    """Add already-made signature lines (e.g. witness cosignatures) to a signed note.

    Like :func:`add_signatures`, a new signature replaces an existing one by the same key;
    nothing is verified here. Raises MalformedError for a malformed note, two new signatures by
    the same key or more than :data:`MAX_SIGNATURES` signatures in the result.
    """
    parsed = parse_note(note)
    new = list(signatures)
    if len({(s.name, s.key_id) for s in new}) != len(new):
        raise MalformedError("two of the signatures to merge are by the same key")
    return format_note(_replace_signatures(parsed, new))


VerifierIndex = dict[tuple[str, bytes], Verifier]
"""Known keys by (key name, key ID), as made by :func:`index_verifiers`."""


def index_verifiers(verifiers: Iterable[Verifier]) -> VerifierIndex:
    """Index verifiers by (key name, key ID) for repeated :func:`verify_note` calls.

    Raises MalformedError if two different verifiers share a name and key ID (the same
    verifier, or an equal one, given twice is fine).
    """
    known: VerifierIndex = {}
    for verifier in verifiers:
        pair = (verifier.name, verifier.key_id)
        existing = known.get(pair)
        if existing is not None and existing is not verifier and existing != verifier:
            raise MalformedError(
                f"ambiguous verifiers: two different keys are named {verifier.name!r} "
                f"with key ID {verifier.key_id.hex()}"
            )
        known[pair] = verifier
    return known


def verify_note(
    note: Note, verifiers: Iterable[Verifier] | VerifierIndex
) -> tuple[NoteSignature, ...]:
    """Verify the signatures of a parsed note by the known keys; return those verified.

    signed-note "Signatures": signatures whose (key name, key ID) pair matches no verifier are
    ignored; every signature by a known key is verified, including repeated ones. Returns the
    verified signatures, one per key, in note order.

    ``verifiers`` are the known keys, or an index of them from :func:`index_verifiers`.

    Raises MalformedError if two different verifiers share a name and key ID; SignatureError
    if a known key's signature fails; UnverifiedNoteError if no known key signed the note.
    """
    known = verifiers if isinstance(verifiers, dict) else index_verifiers(verifiers)
    message = note.text.encode("utf-8")
    verified: list[NoteSignature] = []
    seen: set[tuple[str, bytes]] = set()
    for signature in note.signatures:
        pair = (signature.name, signature.key_id)
        verifier = known.get(pair)
        if verifier is None:
            continue
        if not verifier.verify(message, signature.signature):
            raise SignatureError(
                f"invalid signature by known key {signature.name}+{signature.key_id.hex()}"
            )
        if pair not in seen:
            seen.add(pair)
            verified.append(signature)
    if not verified:
        raise UnverifiedNoteError("note has no signature from a known key")
    return tuple(verified)


def open_note(
    data: bytes, verifiers: Iterable[Verifier]
) -> tuple[Note, tuple[NoteSignature, ...]]:
    """Parse a signed note and verify the signatures of the known keys.

    :func:`parse_note` then :func:`verify_note`. Returns the note and the verified signatures,
    one per key, in note order.

    Raises MalformedError for a malformed note or two different verifiers sharing a name and
    key ID; SignatureError if a known key's signature fails; UnverifiedNoteError if no known
    key signed the note.
    """
    note = parse_note(data)
    return note, verify_note(note, verifiers)
