"""Tests of server.jose: key loading and compact JWS verification for SETs (EdDSA, ES256, RS256).

JWS tokens are built here with ``cryptography`` (tests/oauth_support.py), independently of the
verifier; a mutation table flips each part and every mutation must fail.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from server.jose import (
    JoseError,
    b64url_decode,
    jwk_thumbprint,
    load_ed25519_key,
    load_public_key,
    verify_compact_jws,
)
from server.principals import set_key
from server.storage.base import PrincipalKey
from tests.oauth_support import SetSigner, b64url, make_set, set_claims

ALGS = ("EdDSA", "ES256", "RS256")


@pytest.fixture(scope="module")
def signers() -> dict[str, SetSigner]:
    return {alg: SetSigner.generate(alg) for alg in ALGS}


def key_of(signer: SetSigner, **kwargs: Any) -> PrincipalKey:
    return signer.principal_key(**kwargs)


def code_of(token: str, keys: list[PrincipalKey], now_ms: int = 1000) -> str:
    with pytest.raises(JoseError) as info:
        verify_compact_jws(token, keys, now_ms=now_ms)
    assert token not in info.value.description
    return info.value.code


def test_rfc7638_thumbprint_known_answer() -> None:
    # RFC 7638 §3.1 example RSA key and thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
        "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-6"
        "5YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyr"
        "dkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnq"
        "DKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    with pytest.raises(JoseError):
        jwk_thumbprint({"kty": "oct", "k": "x"})


@pytest.mark.parametrize("alg", ALGS)
def test_keys_load_from_jwk_and_pem(signers: dict[str, SetSigner], alg: str) -> None:
    signer = signers[alg]
    from_jwk = load_public_key(json.dumps(signer.public_jwk()).encode())
    from_pem = load_public_key(signer.public_pem())
    assert from_jwk.algorithm == from_pem.algorithm == alg
    assert from_jwk.public_key == from_pem.public_key
    assert from_jwk.key_id == signer.kid
    jwk_without_kid = {k: v for k, v in signer.public_jwk().items() if k != "kid"}
    assert from_pem.key_id == jwk_thumbprint(jwk_without_kid)


def test_bad_keys_are_refused(signers: dict[str, SetSigner]) -> None:
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    private_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ed_jwk = signers["EdDSA"].public_jwk()
    for data in [
        small_rsa.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        p384.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        private_pem,
        json.dumps({**ed_jwk, "d": "AAAA"}).encode(),
        json.dumps({**ed_jwk, "alg": "ES256"}).encode(),
        json.dumps({**ed_jwk, "use": "enc"}).encode(),
        json.dumps({**ed_jwk, "kid": "has space"}).encode(),
        json.dumps({**ed_jwk, "x": ed_jwk["x"] + "="}).encode(),
        json.dumps({"kty": "oct", "k": "c2VjcmV0"}).encode(),
        b"[1, 2]",
        b'{"kty": "OKP", "kty": "OKP"}',
        b"not a key",
    ]:
        with pytest.raises(JoseError) as info:
            load_public_key(data)
        assert info.value.code == "invalid_key"


def test_event_keys_load_in_three_forms() -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.dumps({"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}).encode()
    for form in (pem, jwk, base64.b64encode(raw), b64url(raw).encode() + b"\n"):
        assert load_ed25519_key(form) == raw
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for bad in (rsa_pem, base64.b64encode(raw[:31]), b"%%%"):
        with pytest.raises(JoseError):
            load_ed25519_key(bad)


def test_b64url_is_strict() -> None:
    assert b64url_decode("AQI", what="x") == b"\x01\x02"
    for bad in ("AQI=", "AQ+I", "AQJ", "A", "AQ I"):
        with pytest.raises(JoseError):
            b64url_decode(bad, what="x")


@pytest.mark.parametrize("alg", ALGS)
def test_valid_sets_verify(signers: dict[str, SetSigner], alg: str) -> None:
    signer = signers[alg]
    claims = set_claims()
    token = make_set(signer, claims)
    others = [key_of(s) for a, s in signers.items() if a != alg]
    verified = verify_compact_jws(token, [*others, key_of(signer)], now_ms=1000)
    assert json.loads(verified.payload) == claims
    assert verified.key.key_id == signer.kid
    assert verified.header["alg"] == alg
    # Without a kid, every registered key of the algorithm is tried.
    no_kid = make_set(signer, claims, header={"kid": None})
    assert verify_compact_jws(no_kid, [key_of(signer)], now_ms=1000).key.algorithm == alg
    # typ may carry the application/ prefix, in any case (RFC 7515 §4.1.9).
    prefixed = make_set(signer, claims, header={"typ": "Application/SecEvent+JWT"})
    verify_compact_jws(prefixed, [key_of(signer)], now_ms=1000)


def test_refusals(signers: dict[str, SetSigner]) -> None:
    signer = signers["ES256"]
    key = key_of(signer)
    claims = set_claims()
    good = make_set(signer, claims)
    head, body, sig = good.split(".")
    unsigned = b64url(json.dumps({"alg": "none", "typ": "secevent+jwt"}).encode())
    cases = {
        "alg none": (f"{unsigned}.{body}.", "invalid_request"),
        "alg none with signature": (f"{unsigned}.{body}.{sig}", "invalid_request"),
        "alg HS256": (make_set(signer, claims, header={"alg": "HS256"}), "invalid_request"),
        "no alg": (make_set(signer, claims, header={"alg": None}), "invalid_request"),
        "typ JWT": (make_set(signer, claims, header={"typ": "JWT"}), "invalid_request"),
        "no typ": (make_set(signer, claims, header={"typ": None}), "invalid_request"),
        "crit": (make_set(signer, claims, header={"crit": ["exp"]}), "invalid_request"),
        "unknown kid": (make_set(signer, claims, header={"kid": "other"}), "invalid_key"),
        "alg of another key": (
            make_set(signers["EdDSA"], claims, header={"kid": signer.kid}),
            "invalid_key",
        ),
        "two parts": (f"{head}.{body}", "invalid_request"),
        "four parts": (f"{good}.x", "invalid_request"),
        "padded payload": (f"{head}.{body}=.{sig}", "invalid_request"),
        "header not JSON": (f"{b64url(b'nope')}.{body}.{sig}", "invalid_request"),
        "header not an object": (f"{b64url(b'[1]')}.{body}.{sig}", "invalid_request"),
        "signature of other claims": (
            f"{head}.{b64url(json.dumps(set_claims()).encode())}.{sig}",
            "invalid_key",
        ),
        "forged signature": (make_set(signer, claims, signature=bytes(64)), "invalid_key"),
        "short signature": (make_set(signer, claims, signature=bytes(63)), "invalid_key"),
        "embedded jwk is ignored": (
            make_set(
                signers["EdDSA"],
                claims,
                header={"kid": None, "jwk": signers["EdDSA"].public_jwk()},
            ),
            "invalid_key",
        ),
    }
    for case, (token, code) in cases.items():
        assert code_of(token, [key]) == code, case


def test_expired_keys_and_set_usage(signers: dict[str, SetSigner]) -> None:
    signer = signers["EdDSA"]
    token = make_set(signer, set_claims())
    expired = key_of(signer, not_after_ms=999)
    assert code_of(token, [expired], now_ms=1000) == "invalid_key"
    verify_compact_jws(token, [key_of(signer, not_after_ms=1000)], now_ms=1000)
    raw = set_key(signer.public_pem(), now_ms=0)
    event_only = PrincipalKey(raw.key_id, "event", "Ed25519", raw.public_key, 0)
    assert code_of(make_set(signer, set_claims(), header={"kid": raw.key_id}), [event_only]) == (
        "invalid_key"
    )


def test_every_bit_flip_of_the_signature_fails(signers: dict[str, SetSigner]) -> None:
    signer = signers["EdDSA"]
    token = make_set(signer, set_claims())
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    key = key_of(signer)
    for bit in range(0, len(raw) * 8, 7):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert code_of(f"{head}.{body}.{b64url(bytes(flipped))}", [key]) == "invalid_key"
