"""Submitters and readers: bearer credentials, their hashes, key registration and rate limits.

A principal authenticates with ``Authorization: Bearer <credential>``. A credential is 32 random
bytes in unpadded base64url (43 characters), shown once when the principal is created; the log
stores only :func:`credential_hash` of it, ``SHA-256("etch/credential/v1" || 0x00 ||
credential)``, and finds the principal by that hash. The stored and computed hashes are then
compared with :func:`hmac.compare_digest`, so no comparison of secret-derived bytes depends on
where they differ. A credential is never logged, echoed in an error, or kept in memory beyond
the request.

Submitters also register keys (:class:`server.storage.base.PrincipalKey`): Ed25519 keys that
sign events, and SET keys (JWK or PEM) that sign SETs.

:class:`RateLimiter` is the per-submitter token bucket: ``rate`` events per second refill a
bucket of ``burst`` events; a request of ``n`` events takes ``n`` tokens or is refused with the
seconds to wait.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from server.jose import b64url_encode, jwk_thumbprint, load_ed25519_key, load_public_key
from server.storage.base import Principal, PrincipalKey

__all__ = [
    "CREDENTIAL_DOMAIN",
    "NewPrincipal",
    "RateLimiter",
    "credential_hash",
    "credential_matches",
    "event_key",
    "event_key_id",
    "generate_credential",
    "new_principal",
    "parse_bearer",
    "private_key_text",
    "public_key_text",
    "set_key",
]

CREDENTIAL_DOMAIN: Final = b"etch/credential/v1\x00"
"""Bytes hashed before a credential (domain separation from every other hash in Etch)."""

_CREDENTIAL: Final = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]\Z")
_BEARER: Final = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ([^ ]+)\Z")


def generate_credential() -> str:
    """Return a new credential: 32 bytes from the OS's CSPRNG, unpadded base64url."""
    return b64url_encode(secrets.token_bytes(32))


def credential_hash(credential: str) -> bytes:
    """Return the stored form of a credential: ``SHA-256(CREDENTIAL_DOMAIN || credential)``.

    Requires ``credential`` to be ASCII (as :func:`parse_bearer` guarantees).
    """
    return hashlib.sha256(CREDENTIAL_DOMAIN + credential.encode("ascii")).digest()


def credential_matches(credential: str, stored_hash: bytes) -> bool:
    """Tell, in constant time, whether ``credential`` hashes to ``stored_hash``."""
    return hmac.compare_digest(credential_hash(credential), stored_hash)


def parse_bearer(authorization: str | None) -> str | None:
    """Return the credential of an ``Authorization: Bearer <credential>`` header value.

    RFC 6750 §2.1: the scheme is case-insensitive, one space, then the credential, which must
    be 43 canonical base64url characters. Returns ``None`` for a missing header, another scheme
    or a malformed credential (the caller answers 401 without repeating any of it).
    """
    if authorization is None:
        return None
    match = _BEARER.match(authorization)
    if match is None or not _CREDENTIAL.match(match.group(1)):
        return None
    return match.group(1)


def event_key_id(public_key: bytes) -> str:
    """Return the key id of a raw Ed25519 event key: its RFC 7638 JWK thumbprint."""
    return jwk_thumbprint({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(public_key)})


def event_key(data: bytes, *, now_ms: int, not_after_ms: int | None = None) -> PrincipalKey:
    """Return the event key registered from a key file (PEM, JWK or base64 raw Ed25519).

    Raises JoseError(invalid_key) when the file is not an Ed25519 public key.
    """
    raw = load_ed25519_key(data)
    return PrincipalKey(event_key_id(raw), "event", "Ed25519", raw, now_ms, not_after_ms)


def set_key(
    data: bytes, *, now_ms: int, not_after_ms: int | None = None, issuer: str | None = None
) -> PrincipalKey:
    """Return the SET key registered from a JWK or PEM file (see :func:`load_public_key`).

    Raises JoseError(invalid_key) for keys that cannot verify SETs.
    """
    loaded = load_public_key(data)
    return PrincipalKey(
        loaded.key_id, "set", loaded.algorithm, loaded.public_key, now_ms, not_after_ms, issuer
    )


@dataclass(frozen=True, slots=True)
class NewPrincipal:
    """A principal just created: what to store, the credential to show once, and, when the
    key pair was generated, the Ed25519 private key (raw 32-byte seed) to hand to its owner."""

    principal: Principal
    credential: str
    private_key: bytes | None = None


def new_principal(
    role: str,
    name: str,
    *,
    now_ms: int,
    keys: tuple[PrincipalKey, ...] = (),
    generate_key: bool = False,
) -> NewPrincipal:
    """Create a principal with a fresh credential (and, if asked, a fresh Ed25519 event key).

    Validation of the name and keys happens when storage stores it
    (:func:`server.storage.base.check_principal`).
    """
    credential = generate_credential()
    private_key: bytes | None = None
    if generate_key:
        signing = ed25519.Ed25519PrivateKey.generate()
        private_key = signing.private_bytes_raw()
        raw = signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        keys = (*keys, PrincipalKey(event_key_id(raw), "event", "Ed25519", raw, now_ms))
    principal = Principal(role, name, credential_hash(credential), "active", now_ms, keys)
    return NewPrincipal(principal, credential, private_key)


class RateLimiter:
    """Per-name token buckets: ``rate`` tokens per second, at most ``burst`` stored.

    Requires ``rate > 0`` and ``burst >= 1``. Memory grows with the number of distinct names,
    which are registered submitters only.
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def burst(self) -> int:
        """The bucket size: the most events one request may carry without waiting."""
        return self._burst

    def take(self, name: str, count: int) -> int:
        """Take ``count`` tokens from ``name``'s bucket; return 0, or seconds to wait first.

        Nothing is taken when the answer is not 0. A request larger than the bucket waits for
        a full bucket (it can never pass otherwise: the caller should split it).
        """
        now = self._clock()
        tokens, last = self._buckets.get(name, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - last) * self._rate)
        if count <= tokens:
            self._buckets[name] = (tokens - count, now)
            return 0
        self._buckets[name] = (tokens, now)
        wanted = min(count, self._burst)
        return max(1, math.ceil((wanted - tokens) / self._rate))


def private_key_text(seed: bytes) -> bytes:
    """Return a raw Ed25519 private key (32-byte seed) as PKCS#8 PEM, for a 0600 key file."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def public_key_text(public_key: bytes) -> bytes:
    """Return a raw Ed25519 public key as PEM SubjectPublicKeyInfo."""
    key = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
