"""Compact JWS verification for Security Event Tokens, and the public keys it trusts.

What ``POST /v1/sets`` needs of JOSE, written on ``cryptography`` and nothing else:

* :func:`load_public_key` reads a registered key: a JWK (RFC 7517; ``OKP``/``Ed25519``,
  ``EC``/``P-256`` or ``RSA`` of at least 2048 bits) or a PEM SubjectPublicKeyInfo. Its JOSE
  algorithm follows from the key (``EdDSA``, ``ES256``, ``RS256``; RFC 8037, RFC 7518 §3.3-3.4);
  a JWK ``alg`` must agree. Its key id is the JWK's ``kid``, else the RFC 7638 thumbprint.
* :func:`load_ed25519_key` reads a submitter's event key (PEM, JWK, or the raw 32 bytes in
  base64) as the raw public key.
* :func:`verify_compact_jws` checks a compact JWS (RFC 7515 §7.1) against registered keys: the
  header must be a JSON object with an ``alg`` of ``EdDSA``, ``ES256`` (signature ``r || s``,
  64 bytes, RFC 7518 §3.4) or ``RS256``, and ``typ`` ``secevent+jwt`` (RFC 8417 §2.3; the
  ``application/`` prefix may be present, case does not matter); ``alg: none``, any other
  algorithm and any ``crit`` header are refused. Keys named in the header (``jku``, ``jwk``,
  ``x5u``, ``x5c``) are ignored: only registered keys count. The ``kid``, when present, selects
  the key; without one every registered key of the algorithm is tried. Expired keys do not
  verify anything.

Errors are :class:`JoseError`, carrying the RFC 8935 §2.3 error code (``invalid_request`` for a
malformed token or header, ``invalid_key`` for an unknown, expired or non-matching key or a
signature that does not verify) and a description that never repeats the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from server.storage.base import PrincipalKey

__all__ = [
    "MIN_RSA_BITS",
    "SET_ALGORITHMS",
    "JoseError",
    "LoadedKey",
    "VerifiedJws",
    "b64url_decode",
    "b64url_encode",
    "jwk_thumbprint",
    "load_ed25519_key",
    "load_public_key",
    "verify_compact_jws",
]

SET_ALGORITHMS: Final = ("EdDSA", "ES256", "RS256")
"""JWS algorithms accepted for SETs."""

MIN_RSA_BITS: Final = 2048
"""Smallest RSA modulus accepted (RFC 7518 §3.3)."""

SET_TYPES: Final = ("secevent+jwt", "application/secevent+jwt")
"""Accepted ``typ`` header values, compared case-insensitively (RFC 8417 §2.3)."""

MAX_KEY_TEXT: Final = 16 * 1024
"""Largest key file or JWK text read."""

_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*\Z")
_KID: Final = re.compile(r"[\x21-\x7e]{1,128}\Z")


class JoseError(ValueError):
    """A key or a JWS was refused; ``code`` is the RFC 8935 error code."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass(frozen=True, slots=True)
class LoadedKey:
    """A public key read from a JWK or PEM: JOSE algorithm, DER SPKI bytes, key id."""

    algorithm: str
    public_key: bytes
    key_id: str


@dataclass(frozen=True, slots=True)
class VerifiedJws:
    """A verified compact JWS: its header, its payload bytes and the registered key used."""

    header: dict[str, Any]
    payload: bytes
    key: PrincipalKey


def b64url_encode(data: bytes) -> str:
    """Return unpadded base64url (RFC 7515 §2 ``BASE64URL``)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, what: str) -> bytes:
    """Decode strict unpadded base64url: no padding, no other characters, canonical.

    Raises JoseError(invalid_request) naming ``what``.
    """
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise JoseError("invalid_request", f"{what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise JoseError("invalid_request", f"{what} is not unpadded base64url") from None
    if b64url_encode(data) != text:
        raise JoseError("invalid_request", f"{what} is not canonical base64url")
    return data


# --- keys -------------------------------------------------------------------------------------


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise JoseError("invalid_request", f"{what} repeats a member")
            result[key] = value
        return result

    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, JoseError):
            raise
        raise JoseError("invalid_request", f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise JoseError("invalid_request", f"{what} is not a JSON object")
    return value


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """Return the RFC 7638 SHA-256 thumbprint of a public JWK, base64url.

    Uses the required members only (``crv``/``kty``/``x`` for OKP, ``crv``/``kty``/``x``/``y``
    for EC, ``e``/``kty``/``n`` for RSA), in lexicographic order, without whitespace.
    Raises JoseError(invalid_key) for another key type or a missing member.
    """
    members = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
    names = members.get(str(jwk.get("kty")))
    if names is None or not all(isinstance(jwk.get(n), str) for n in names):
        raise JoseError("invalid_key", "the JWK lacks the members of its key type")
    canonical = json.dumps({n: jwk[n] for n in names}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def _spki(key: Any) -> bytes:
    data: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def _algorithm_of(key: Any) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise JoseError("invalid_key", "EC keys must be on P-256 (ES256)")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise JoseError("invalid_key", f"RSA keys must have at least {MIN_RSA_BITS} bits")
        return "RS256"
    raise JoseError("invalid_key", "only Ed25519, P-256 and RSA keys are accepted")


def _key_from_jwk(jwk: dict[str, Any]) -> Any:
    if "d" in jwk or "p" in jwk or "k" in jwk:
        raise JoseError("invalid_key", "this is a private or symmetric key; give the public key")
    kty = jwk.get("kty")
    try:
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            raw = b64url_decode(str(jwk.get("x", "")), what="JWK x")
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        if kty == "EC" and jwk.get("crv") == "P-256":
            x = b64url_decode(str(jwk.get("x", "")), what="JWK x")
            y = b64url_decode(str(jwk.get("y", "")), what="JWK y")
            if len(x) != 32 or len(y) != 32:
                raise JoseError("invalid_key", "P-256 coordinates are 32 bytes each")
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
        if kty == "RSA":
            n = int.from_bytes(b64url_decode(str(jwk.get("n", "")), what="JWK n"), "big")
            e = int.from_bytes(b64url_decode(str(jwk.get("e", "")), what="JWK e"), "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
    except JoseError as exc:
        raise JoseError("invalid_key", exc.description) from None
    except (ValueError, UnsupportedAlgorithm):
        raise JoseError("invalid_key", "the JWK is not a valid public key") from None
    raise JoseError("invalid_key", "only OKP/Ed25519, EC/P-256 and RSA JWKs are accepted")


def _parse_key_text(data: bytes) -> tuple[Any, dict[str, Any] | None]:
    """Return (public key object, the JWK if the text was one)."""
    if len(data) > MAX_KEY_TEXT:
        raise JoseError("invalid_key", f"key text is larger than {MAX_KEY_TEXT} bytes")
    stripped = data.strip()
    if stripped.startswith((b"{", b"[")):
        try:
            jwk = _json_object(stripped, "the JWK")
        except JoseError as exc:
            raise JoseError("invalid_key", exc.description) from None
        return _key_from_jwk(jwk), jwk
    if b"PRIVATE KEY" in stripped:
        raise JoseError("invalid_key", "this is a private key; give the public key")
    if stripped.startswith(b"-----BEGIN"):
        try:
            return serialization.load_pem_public_key(stripped), None
        except (ValueError, UnsupportedAlgorithm):
            raise JoseError("invalid_key", "the PEM text is not a public key") from None
    raise JoseError("invalid_key", "give a JWK (JSON) or a PEM public key")


def load_public_key(data: bytes) -> LoadedKey:
    """Read a SET verification key from JWK JSON or PEM SubjectPublicKeyInfo text.

    Raises JoseError(invalid_key): not a public key of an accepted type, an RSA key under 2048
    bits, a private key, a JWK whose ``alg`` or ``use`` contradicts the key, a bad ``kid``.
    """
    key, jwk = _parse_key_text(data)
    algorithm = _algorithm_of(key)
    if jwk is None:
        return LoadedKey(algorithm, _spki(key), _thumbprint_of(key))
    if "alg" in jwk and jwk["alg"] != algorithm:
        raise JoseError("invalid_key", f"the JWK's alg does not match its key ({algorithm})")
    if "use" in jwk and jwk["use"] != "sig":
        raise JoseError("invalid_key", "the JWK's use must be sig")
    kid = jwk.get("kid")
    if kid is None:
        kid = jwk_thumbprint(jwk)
    if not isinstance(kid, str) or not _KID.match(kid):
        raise JoseError("invalid_key", "kid must be 1 to 128 printable ASCII characters")
    return LoadedKey(algorithm, _spki(key), kid)


def _thumbprint_of(key: Any) -> str:
    """RFC 7638 thumbprint of a key object (through its JWK form)."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return jwk_thumbprint({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)})
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers = key.public_numbers()
        return jwk_thumbprint(
            {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url_encode(numbers.x.to_bytes(32, "big")),
                "y": b64url_encode(numbers.y.to_bytes(32, "big")),
            }
        )
    numbers_rsa = key.public_numbers()
    n, e = numbers_rsa.n, numbers_rsa.e
    return jwk_thumbprint(
        {
            "kty": "RSA",
            "n": b64url_encode(n.to_bytes((n.bit_length() + 7) // 8, "big")),
            "e": b64url_encode(e.to_bytes((e.bit_length() + 7) // 8, "big")),
        }
    )


def _raw_key_text(text: bytes) -> bytes:
    """Decode canonical standard base64 (padded) or unpadded base64url. Raises JoseError."""
    try:
        ascii_text = text.decode("ascii")
        if "-" in ascii_text or "_" in ascii_text or len(ascii_text) % 4:
            return b64url_decode(ascii_text, what="the key")
        raw = base64.b64decode(ascii_text, validate=True)
    except (UnicodeDecodeError, binascii.Error, JoseError):
        raise JoseError("invalid_key", "give a PEM, a JWK or base64 of 32 bytes") from None
    if base64.b64encode(raw).decode("ascii") != ascii_text:
        raise JoseError("invalid_key", "the key is not canonical base64")
    return raw


def load_ed25519_key(data: bytes) -> bytes:
    """Read a submitter's Ed25519 event key and return the raw 32-byte public key.

    Accepts PEM SubjectPublicKeyInfo, an OKP/Ed25519 JWK, or the 32 bytes in standard or
    URL-safe base64 on one line. Raises JoseError(invalid_key) for anything else.
    """
    stripped = data.strip()
    if stripped.startswith((b"{", b"-----BEGIN")):
        key, _ = _parse_key_text(stripped)
    else:
        raw = _raw_key_text(stripped)
        if len(raw) != 32:
            raise JoseError("invalid_key", "a raw Ed25519 public key is 32 bytes")
        key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise JoseError("invalid_key", "event keys are Ed25519 keys")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- verification -------------------------------------------------------------------------------


def _verify(key: PrincipalKey, algorithm: str, signature: bytes, message: bytes) -> bool:
    """Return whether ``signature`` over ``message`` verifies with ``key`` (never raises)."""
    try:
        public = serialization.load_der_public_key(key.public_key)
        if algorithm == "EdDSA" and isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
            return True
        if algorithm == "ES256" and isinstance(public, ec.EllipticCurvePublicKey):
            if len(signature) != 64:
                return False
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            public.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
            return True
        if algorithm == "RS256" and isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            return True
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return False


def _header(segment: str) -> dict[str, Any]:
    header = _json_object(b64url_decode(segment, what="the JWS header"), "the JWS header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JoseError("invalid_request", "the JWS header has no alg")
    if alg.lower() == "none":
        raise JoseError("invalid_request", "unsigned SETs (alg none) are not accepted")
    if alg not in SET_ALGORITHMS:
        raise JoseError("invalid_request", f"alg must be one of {', '.join(SET_ALGORITHMS)}")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in SET_TYPES:
        raise JoseError("invalid_request", "typ must be secevent+jwt (RFC 8417 §2.3)")
    if "crit" in header:
        raise JoseError("invalid_request", "no critical header extensions are supported")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not _KID.match(kid)):
        raise JoseError("invalid_request", "kid must be 1 to 128 printable ASCII characters")
    return header


def verify_compact_jws(token: str, keys: Sequence[PrincipalKey], *, now_ms: int) -> VerifiedJws:
    """Verify a compact JWS (RFC 7515 §7.1) with the registered SET keys ``keys``.

    Only keys with usage ``set`` count; a key whose ``not_after_ms`` is before ``now_ms`` has
    expired. Returns the header, the payload bytes and the key that verified the signature.

    Raises JoseError: ``invalid_request`` for a malformed token or header, ``alg: none`` or
    another algorithm, a wrong ``typ``, ``crit``; ``invalid_key`` for an unknown ``kid``, no
    registered key of the algorithm, only expired keys, or a signature that does not verify.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError("invalid_request", "a SET is a compact JWS: three dot-separated parts")
    header = _header(parts[0])
    payload = b64url_decode(parts[1], what="the JWS payload")
    signature = b64url_decode(parts[2], what="the JWS signature")
    algorithm: str = header["alg"]
    kid = header.get("kid")
    candidates = [k for k in keys if k.usage == "set"]
    if kid is not None:
        candidates = [k for k in candidates if k.key_id == kid]
        if not candidates:
            raise JoseError("invalid_key", "no registered key has this kid")
    candidates = [k for k in candidates if k.algorithm == algorithm]
    if not candidates:
        raise JoseError("invalid_key", f"no registered {algorithm} key")
    live = [k for k in candidates if k.not_after_ms is None or k.not_after_ms >= now_ms]
    if not live:
        raise JoseError("invalid_key", "the key has expired")
    message = (parts[0] + "." + parts[1]).encode("ascii")
    for key in live:
        if _verify(key, algorithm, signature, message):
            return VerifiedJws(header, payload, key)
    raise JoseError("invalid_key", "the signature does not verify with the registered key")
