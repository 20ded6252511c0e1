"""Helpers of the OAuth layer's tests: sample events, signed envelopes, SETs, an in-process log.

Signing and JWS building here use ``cryptography`` and ``cbor2`` directly, not the server's
code, so the tests check the server against an independent reading of the wire format:
the event signature is Ed25519 over ``b"etch/event/v1\\x00" || deterministic_cbor(event)``
(``cbor2`` canonical encoding equals RFC 8949 §4.2.1 order for text keys).
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from client.tokens import token_ref
from merkle.note import Ed25519Signer
from server.codec import Limits
from server.ingest import OAuthSettings, create_oauth_app
from server.log import LogService
from server.sequencer import MonotonicClock
from server.storage import PostgresStorage, SQLiteStorage, open_storage
from server.storage.base import Principal, PrincipalKey
from tests.server_helpers import ORIGIN, make_signer

__all__ = [
    "EVENT_CONTEXT",
    "NOW",
    "OAuthLog",
    "SetSigner",
    "Submitter",
    "b64url",
    "canonical",
    "envelope",
    "make_set",
    "open_oauth_log",
    "sample_event",
    "signed_message",
]

EVENT_CONTEXT = b"etch/event/v1\x00"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z, the fixed clock of these tests (seconds)
REF_A = token_ref(b"access-token-a")
REF_B = token_ref(b"refresh-token-b")
REF_C = token_ref(b"code-c")


def canonical(value: Mapping[str, Any]) -> bytes:
    """Deterministic CBOR of an event, computed with cbor2 (independent of the server)."""
    return cbor2.dumps(dict(value), canonical=True)


def signed_message(event: Mapping[str, Any]) -> bytes:
    """What a submitter signs for ``event``."""
    return EVENT_CONTEXT + canonical(event)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_EXTRA: dict[str, dict[str, Any]] = {
    "token-issued": {
        "client_id": "client-1",
        "sub": "pseudonym-42",
        "token_type": "refresh_token",
        "token_ref": REF_B,
        "grant_type": "refresh_token",
        "scope": ["openid", "offline_access"],
        "exp": NOW + 86_400,
        "parent_token_ref": REF_A,
        "resource": ["https://api.example.com/"],
    },
    "token-refreshed": {
        "client_id": "client-1",
        "sub": {"format": "opaque", "id": "pseudonym-42"},
        "token_ref": REF_B,
        "issued_token_ref": REF_A,
        "rotated": True,
        "scope": ["openid"],
    },
    "token-revoked": {
        "client_id": "client-1",
        "token_ref": REF_A,
        "token_type": "access_token",
        "reason": "api",
    },
    "tokens-revoked": {"sub": "pseudonym-42", "reason": "user", "client_id": "client-1"},
    "token-introspected": {
        "client_id": "rs-1",
        "token_ref": REF_A,
        "active": False,
        "token_type": "access_token",
        "scope": ["read"],
    },
    "token-exchanged": {
        "client_id": "client-1",
        "subject_token_ref": REF_A,
        "actor_token_ref": REF_C,
        "issued_token_ref": REF_B,
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": ["https://backend.example.com"],
        "scope": ["read"],
    },
    "consent-granted": {"client_id": "client-1", "sub": "p-1", "scope": ["openid", "email"]},
    "consent-updated": {
        "client_id": "client-1",
        "sub": "p-1",
        "scope": ["openid"],
        "previous_scope": ["openid", "email"],
    },
    "consent-revoked": {"client_id": "client-1", "sub": "p-1"},
    "login-succeeded": {"sub": "p-1", "amr": ["pwd", "otp"], "acr": "urn:example:loa:2"},
    "login-failed": {"reason": "invalid_credentials", "amr": ["pwd"]},
    "session-revoked": {"sub": "p-1", "reason": "admin action", "initiating_entity": "admin"},
    "device-authorization": {
        "client_id": "tv-1",
        "token_ref": REF_C,
        "scope": ["video"],
        "exp": NOW + 600,
    },
    "client-registered": {
        "client_id": "client-2",
        "client_name": "Example App",
        "redirect_uris": ["https://app.example.com/cb"],
        "grant_types": ["authorization_code", "urn:example:custom-grant"],
        "token_endpoint_auth_method": "private_key_jwt",
        "scope": ["openid"],
    },
    "client-updated": {"client_id": "client-2", "client_name": "Renamed"},
    "client-disabled": {"client_id": "client-2", "reason": "abuse report"},
    "client-enabled": {"client_id": "client-2"},
    "client-credential-rotated": {"client_id": "client-2", "credential_type": "client_secret"},
    "credential-change": {
        "sub": {"format": "iss_sub", "iss": "https://as.example.com", "sub": "p-1"},
        "credential_type": "fido2-roaming",
        "change_type": "create",
        "friendly_name": "USB key",
    },
    "credential-compromise": {"sub": "p-1", "credential_type": "password"},
    "account-disabled": {"sub": "p-1", "reason": "hijacking"},
}


def sample_event(kind: str, **changes: Any) -> dict[str, Any]:
    """A valid event of type ``kind`` (all its optional fields set), with ``changes`` applied.

    A change to ``None`` removes the field.
    """
    event: dict[str, Any] = {
        "iss": "https://as.example.com",
        "jti": str(uuid.uuid4()),
        "iat": NOW,
        "toe": NOW - 1,
        "txn": "txn-1",
        "type": kind,
        **_EXTRA[kind],
    }
    for name, value in changes.items():
        if value is None:
            event.pop(name, None)
        else:
            event[name] = value
    return event


def sample_types() -> list[str]:
    """Every event type that has a sample."""
    return list(_EXTRA)


@dataclass
class Submitter:
    """A registered submitter: its name, credential and Ed25519 signing key."""

    name: str
    credential: str
    key: ed25519.Ed25519PrivateKey

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.credential}"}

    def sign(self, event: Mapping[str, Any]) -> str:
        return base64.b64encode(self.key.sign(signed_message(event))).decode("ascii")


def envelope(submitter: Submitter, event: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body that submits ``event`` signed by ``submitter``."""
    return {"event": dict(event), "signature": submitter.sign(event)}


@dataclass
class SetSigner:
    """A SET signing key (EdDSA, ES256 or RS256) and its public form."""

    alg: str
    kid: str
    private: Any

    @classmethod
    def generate(cls, alg: str, kid: str | None = None) -> SetSigner:
        private: Any
        if alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(alg, kid or f"{alg.lower()}-key", private)

    def public_pem(self) -> bytes:
        data: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return data

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if self.alg == "EdDSA":
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": self.kid}
        numbers = public.public_numbers()
        if self.alg == "ES256":
            return {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url(numbers.x.to_bytes(32, "big")),
                "y": b64url(numbers.y.to_bytes(32, "big")),
                "kid": self.kid,
            }
        n, e = numbers.n, numbers.e
        return {
            "kty": "RSA",
            "n": b64url(n.to_bytes((n.bit_length() + 7) // 8, "big")),
            "e": b64url(e.to_bytes((e.bit_length() + 7) // 8, "big")),
            "kid": self.kid,
        }

    def sign(self, message: bytes) -> bytes:
        if self.alg == "EdDSA":
            signature: bytes = self.private.sign(message)
            return signature
        if self.alg == "ES256":
            der = self.private.sign(message, ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        rsa_signature: bytes = self.private.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return rsa_signature

    def principal_key(
        self, *, not_after_ms: int | None = None, issuer: str | None = None
    ) -> PrincipalKey:
        from server.principals import set_key

        return set_key(
            json.dumps(self.public_jwk()).encode(),
            now_ms=0,
            not_after_ms=not_after_ms,
            issuer=issuer,
        )


def make_set(
    signer: SetSigner,
    claims: Mapping[str, Any],
    *,
    header: Mapping[str, Any] | None = None,
    signature: bytes | None = None,
) -> str:
    """A compact JWS over ``claims`` (header defaults: alg, typ secevent+jwt, kid)."""
    head = {"alg": signer.alg, "typ": "secevent+jwt", "kid": signer.kid}
    if header is not None:
        head = {**head, **header}
        head = {k: v for k, v in head.items() if v is not None}
    first = b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(dict(claims)).encode())
    sig = signature if signature is not None else signer.sign(first.encode("ascii"))
    return first + "." + b64url(sig)


def set_claims(**changes: Any) -> dict[str, Any]:
    """Valid SET claims (a CAEP session-revoked event), with ``changes`` applied."""
    claims: dict[str, Any] = {
        "iss": "https://as.example.com",
        "jti": str(uuid.uuid4()),
        "iat": NOW,
        "aud": ORIGIN,
        "sub_id": {"format": "opaque", "id": "pseudonym-7"},
        "events": {
            "https://schemas.openid.net/secevent/caep/event-type/session-revoked": {
                "initiating_entity": "policy",
                "event_timestamp": NOW - 5,
            },
            "https://schemas.openid.net/secevent/oauth/event-type/token-revoked": {
                "token_ref": REF_A,
                "client_id": "client-1",
            },
        },
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


class FixedClock(MonotonicClock):
    """The log's clock for tests: a settable wall clock (milliseconds)."""

    def __init__(self, seconds: float = NOW) -> None:
        self.seconds = seconds
        super().__init__(lambda: self.seconds)


@dataclass
class OAuthLog:
    """A log with the OAuth layer, in process, and a client for it."""

    service: LogService
    storage: SQLiteStorage | PostgresStorage
    client: httpx.AsyncClient
    clock: FixedClock
    submitters: dict[str, Submitter] = field(default_factory=dict)

    async def add_submitter(
        self, name: str, *, set_keys: tuple[PrincipalKey, ...] = (), expired: bool = False
    ) -> Submitter:
        """Register a submitter with a fresh credential and Ed25519 event key."""
        from server.principals import event_key_id, new_principal

        created = new_principal("submitter", name, now_ms=0, keys=set_keys)
        key = ed25519.Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        not_after = 1 if expired else None
        event_key = PrincipalKey(event_key_id(raw), "event", "Ed25519", raw, 0, not_after)
        principal = Principal(
            "submitter",
            name,
            created.principal.credential_hash,
            "active",
            0,
            (event_key, *set_keys),
        )
        await self.storage.add_principal(principal)
        submitter = Submitter(name, created.credential, key)
        self.submitters[name] = submitter
        return submitter

    async def add_reader(self, name: str) -> str:
        """Register a reader and return its credential."""
        from server.principals import new_principal

        created = new_principal("reader", name, now_ms=0)
        await self.storage.add_principal(created.principal)
        return created.credential

    async def submit(self, submitter: Submitter, event: Mapping[str, Any]) -> httpx.Response:
        return await self.client.post(
            "/v1/events", json=envelope(submitter, event), headers=submitter.headers
        )

    async def size(self) -> tuple[int, bytes]:
        """The committed tree size and stored checkpoint, for "nothing changed" checks."""
        state = await self.storage.load_state()
        assert state is not None
        return state.tree_size, state.checkpoint


@contextlib.asynccontextmanager
async def open_oauth_log(
    url: str,
    settings: OAuthSettings | None = None,
    *,
    limits: Limits | None = None,
    signer: Ed25519Signer | None = None,
) -> AsyncIterator[OAuthLog]:
    """Run a log with the OAuth layer on ``url`` in process, on the fixed test clock.

    Pass the same ``signer`` (the log's key) to reopen a log.
    """
    storage = open_storage(url)
    assert isinstance(storage, SQLiteStorage | PostgresStorage)
    clock = FixedClock()
    service = LogService(
        storage, signer or make_signer(ORIGIN), ORIGIN, batch_period=0.002, clock=clock
    )
    app = create_oauth_app(service, storage, settings, limits=limits)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://etch.test", timeout=60
        ) as client:
            yield OAuthLog(service, storage, client, clock)
