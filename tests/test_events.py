"""Tests of the event model (server.events), token references, leaves and the event schema.

Known answers, every event type accepted and round-tripping to one canonical encoding from JSON
and CBOR input, tables of refused events (wrong shape, secrets by name and by shape), and
hypothesis-generated valid events built from the field declarations.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.tokens import is_token_ref, parse_token_ref, token_ref
from server.codec import decode_cbor, decode_json, encode_deterministic
from server.event_schema import envelope_schema, event_schema
from server.events import (
    COMMON_FIELDS,
    EVENT_TYPES,
    MAX_TIME,
    Boolean,
    EventError,
    FieldKind,
    Integer,
    SubjectId,
    Text,
    TextList,
    Time,
    TokenRef,
    check_no_secrets,
    event_lookup_keys,
    is_secret_name,
    secret_shape,
    set_lookup_keys,
    type_name,
    validate_event,
    validate_set_claims,
)
from server.leaves import (
    EVENT_SIGNATURE_CONTEXT,
    Leaf,
    LeafError,
    encode_event_leaf,
    encode_set_leaf,
    event_signing_message,
    parse_leaf,
)
from tests.oauth_support import NOW, REF_A, canonical, sample_event, sample_types, set_claims


def accept(event: dict[str, Any]) -> None:
    check_no_secrets(event, "/event")
    validate_event(event, now=NOW, pointer="/event")


def refusal(event: Any, *, now: int = NOW) -> EventError:
    """Return the error that refuses ``event``; fail if it is accepted."""
    try:
        check_no_secrets(event, "/event")
        validate_event(event, now=now, pointer="/event")
    except EventError as error:
        return error
    raise AssertionError("the event was accepted")


# -- token references --------------------------------------------------------------------------


def test_token_ref_known_answer() -> None:
    # sha256(b"etch/token-ref/v1\x00" + b"2YotnFZFEjr1zCsicMWpAA"), base64url without padding;
    # reproduce: python3 -c 'import hashlib,base64; print(base64.urlsafe_b64encode(
    #   hashlib.sha256(b"etch/token-ref/v1\x002YotnFZFEjr1zCsicMWpAA").digest()))'
    assert token_ref(b"2YotnFZFEjr1zCsicMWpAA") == "-bfU429PR50gUa3RLbpGgosKKPkwMRgFyt9OMlQb4OQ"
    assert token_ref(b"a") != token_ref(b"b")


def test_token_ref_strictness() -> None:
    ref = token_ref(b"some token")
    assert is_token_ref(ref)
    assert len(parse_token_ref(ref)) == 32
    last = "AEIMQUYcgkosw048"
    non_canonical = ref[:-1] + next(c for c in "BCDFGH" if c != ref[-1])
    for bad in (
        ref + "=",
        ref[:-1],
        ref + "A",
        " " + ref[1:],
        non_canonical,
        ref.replace(ref[0], "+"),
    ):
        assert not is_token_ref(bad), bad
        with pytest.raises(ValueError, match="token reference"):
            parse_token_ref(bad)
    assert ref[-1] in last
    assert not is_token_ref(None)
    with pytest.raises(ValueError, match="empty"):
        token_ref(b"")
    with pytest.raises(TypeError):
        token_ref("text")  # type: ignore[arg-type]


# -- every event type --------------------------------------------------------------------------


def test_every_type_has_a_sample_and_a_uri() -> None:
    assert set(sample_types()) == set(EVENT_TYPES)
    for name, event_type in EVENT_TYPES.items():
        assert event_type.uri.startswith(
            ("https://schemas.openid.net/secevent/", "urn:etch:event:")
        )
        assert type_name(event_type.uri) == name
    assert EVENT_TYPES["token-revoked"].uri == (
        "https://schemas.openid.net/secevent/oauth/event-type/token-revoked"
    )
    assert EVENT_TYPES["credential-change"].uri == (
        "https://schemas.openid.net/secevent/caep/event-type/credential-change"
    )
    assert EVENT_TYPES["login-failed"].uri == "urn:etch:event:login-failed"


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_every_type_is_accepted_and_round_trips(kind: str) -> None:
    event = sample_event(kind)
    accept(event)
    expected = canonical(event)
    from_json = decode_json(json.dumps(event).encode())
    from_cbor = decode_cbor(cbor2.dumps(event))
    assert from_json == from_cbor == event
    assert encode_deterministic(from_json) == encode_deterministic(from_cbor) == expected


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_required_fields_alone_are_enough_and_each_is_needed(kind: str) -> None:
    required = EVENT_TYPES[kind].required
    full = sample_event(kind)
    minimal = {name: full[name] for name in required}
    accept(minimal)
    for name in required:
        without = {k: v for k, v in minimal.items() if k != name}
        error = refusal(without)
        assert error.slug == "bad-event"
        assert error.pointer == ("/event/type" if name == "type" else f"/event/{name}")


def test_lookup_keys() -> None:
    event = sample_event("token-exchanged", sub="p-9")
    assert event_lookup_keys(event) == (
        ("type", "token-exchanged"),
        ("client_id", "client-1"),
        ("subject", "p-9"),
        ("token_ref", event["actor_token_ref"]),
        ("token_ref", event["issued_token_ref"]),
        ("token_ref", event["subject_token_ref"]),
    )
    opaque = sample_event("token-refreshed")
    assert ("subject", "pseudonym-42") in event_lookup_keys(opaque)
    iss_sub = sample_event("credential-change")
    assert ("subject", "p-1") in event_lookup_keys(iss_sub)


# -- refused events ----------------------------------------------------------------------------

# A malformed token_ref that still looks like a random token is refused as a possible raw token.
SHAPED = "forbidden-field"
BAD_EVENTS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown type", {"type": "token-minted"}, "/event/type"),
    ("type not text", {"type": 7}, "/event/type"),
    ("extra field", {"colour": "blue"}, "/event/colour"),
    ("field of another type", {"active": True}, "/event/active"),
    ("iat as text", {"iat": "1767225600"}, "/event/iat"),
    ("iat as bool", {"iat": True}, "/event/iat"),
    ("negative iat", {"iat": -1}, "/event/iat"),
    ("far-future iat", {"iat": NOW + 301}, "/event/iat"),
    ("far-future toe", {"toe": NOW + 3600}, "/event/toe"),
    ("huge exp", {"exp": MAX_TIME + 1}, "/event/exp"),
    ("empty jti", {"jti": ""}, "/event/jti"),
    ("jti with a space", {"jti": "a b"}, "/event/jti"),
    ("oversize jti", {"jti": "j" * 129}, "/event/jti"),
    ("oversize client_id", {"client_id": "c" * 257}, "/event/client_id"),
    ("multibyte oversize", {"client_id": "\u00e9" * 129}, "/event/client_id"),
    ("control character", {"client_id": "a\nb"}, "/event/client_id"),
    ("token_type not listed", {"token_type": "magic_token"}, "/event/token_type"),
    ("grant type not a URI", {"grant_type": "custom"}, "/event/grant_type"),
    ("scope not a list", {"scope": "openid profile"}, "/event/scope"),
    ("empty scope list", {"scope": []}, "/event/scope"),
    ("scope with a space", {"scope": ["open id"]}, "/event/scope/0"),
    ("scope with a quote", {"scope": ['a"b']}, "/event/scope/0"),
    ("repeated scope", {"scope": ["a", "b", "a"]}, "/event/scope/2"),
    ("oversize scope list", {"scope": [f"s{i}" for i in range(101)]}, "/event/scope"),
    ("scope item not text", {"scope": ["a", 1]}, "/event/scope/1"),
    ("token_ref 42 chars", {"token_ref": REF_A[:-1]}, "/event/token_ref"),
    ("token_ref padded", {"token_ref": REF_A + "="}, "/event/token_ref"),
    ("token_ref standard alphabet", {"token_ref": "+" + REF_A[1:]}, "/event/token_ref"),
    ("token_ref not canonical", {"token_ref": REF_A[:-1] + "B"}, "/event/token_ref"),
    ("token_ref too short to be a token", {"token_ref": "abc"}, "/event/token_ref"),
    ("sub as number", {"sub": 5}, "/event/sub"),
    ("sub email format", {"sub": {"format": "email", "email": "a@b.c"}}, "/event/sub/format"),
    ("sub iss_sub without iss", {"sub": {"format": "iss_sub", "sub": "x"}}, "/event/sub/iss"),
    ("sub extra member", {"sub": {"format": "opaque", "id": "x", "y": "z"}}, "/event/sub/y"),
    ("exp as float-like text", {"exp": "1.5"}, "/event/exp"),
    ("parent_token_ref as list", {"parent_token_ref": [REF_A]}, "/event/parent_token_ref"),
    ("resource not text", {"resource": [1]}, "/event/resource/0"),
    ("initiating_entity unknown", {"initiating_entity": "robot"}, "/event/initiating_entity"),
]


@pytest.mark.parametrize(
    ("case", "change", "pointer"), BAD_EVENTS, ids=[c for c, _, _ in BAD_EVENTS]
)
def test_bad_events_are_refused(case: str, change: dict[str, Any], pointer: str) -> None:
    event = {**sample_event("token-issued"), **change}
    error = refusal(event)
    value = event.get("token_ref") if case.startswith("token_ref") else None
    shaped = isinstance(value, str) and secret_shape(value) is not None
    expected = SHAPED if shaped else "bad-event"
    assert error.slug == expected, case
    assert error.pointer == pointer, case


def test_non_map_event_and_boolean_types() -> None:
    assert refusal(["not", "a", "map"]).slug == "bad-event"
    assert refusal(sample_event("token-introspected", active=1)).pointer == "/event/active"


def test_clock_bound_moves_with_the_log_clock() -> None:
    event = sample_event("token-issued", iat=NOW + 1000)
    assert refusal(event).pointer == "/event/iat"
    validate_event(event, now=NOW + 700)  # within 300 s of a later clock


# -- no secrets --------------------------------------------------------------------------------

SECRET_NAMES = [
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "refreshToken",
    "Access-Token",
    "subject_token",
    "code",
    "authorization_code",
    "device_code",
    "user_code",
    "client_secret",
    "clientSecret",
    "code_verifier",
    "password",
    "new_password",
    "assertion",
    "client_assertion",
    "private_key",
    "privateKey",
    "api_key",
    "cookie",
    "id_token_hint",
    "secret",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_refused_at_any_depth(name: str) -> None:
    assert is_secret_name(name)
    top = {**sample_event("token-issued"), name: "x"}
    error = refusal(top)
    assert (error.slug, error.pointer) == ("forbidden-field", f"/event/{name}")
    nested = sample_event("login-succeeded", sub={"format": "opaque", "id": "p", name: "x"})
    assert refusal(nested).pointer == f"/event/sub/{name}"
    in_list = sample_event("token-issued", resource=[{"deep": [{name: "x"}]}])
    assert refusal(in_list).pointer == f"/event/resource/0/deep/0/{name}"


@pytest.mark.parametrize(
    "name", ["token_ref", "parent_token_ref", "token_type", "grant_type", "scope", "client_id"]
)
def test_defined_names_are_not_secret_names(name: str) -> None:
    assert not is_secret_name(name)


def jwt_like() -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(b'{"sub":"x"}').rstrip(b"=").decode()
    return f"{header}.{body}.c2lnbmF0dXJl"


OPAQUE_TOKEN = "Ab3" + "x" * 30 + "Q9zK7pLm2n"  # 43 characters, mixed case and digits

SECRET_VALUES = [
    ("JWT", jwt_like()),
    ("JWE", jwt_like().replace(".c2lnbmF0dXJl", ".a.b.c")),
    ("Bearer header", "Bearer abc"),
    ("Basic header", "basic dXNlcjpwYXNz"),
    ("DPoP header", "DPoP eyJ"),
    ("PEM private key", "-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----"),
    ("Hydra access token", "ory_at_abcdef.ghijkl"),
    ("GitHub token", "ghp_0123456789abcdef"),
    ("opaque bearer token", OPAQUE_TOKEN),
    ("opaque token as URL-safe base64", token_ref(b"looks random")),
]


@pytest.mark.parametrize(("case", "value"), SECRET_VALUES, ids=[c for c, _ in SECRET_VALUES])
def test_secret_shaped_values_are_refused_anywhere(case: str, value: str) -> None:
    assert secret_shape(value) is not None, case
    for event, pointer in [
        (sample_event("token-issued", client_id=value), "/event/client_id"),
        (sample_event("token-issued", scope=["openid", value]), "/event/scope/1"),
        (sample_event("client-disabled", reason=value), "/event/reason"),
        (sample_event("token-issued", jti=value), "/event/jti"),
    ]:
        error = refusal(event)
        assert (error.slug, error.pointer) == ("forbidden-field", pointer), case
        assert value not in str(error)
        assert value not in error.detail


def test_hashes_are_allowed_where_defined() -> None:
    pseudonym = token_ref(b"pairwise subject")  # shaped like a token, but a hash by design
    accept(sample_event("token-issued", token_ref=pseudonym, sub=pseudonym))
    accept(sample_event("token-refreshed", sub={"format": "opaque", "id": pseudonym}))
    iss_sub = {"format": "iss_sub", "iss": "https://as.example.com", "sub": pseudonym}
    accept(sample_event("credential-change", sub=iss_sub))
    # The exemption is for token references only: a JWT is refused in a token_ref field too.
    assert refusal(sample_event("token-issued", token_ref=jwt_like())).slug == "forbidden-field"
    assert refusal(sample_event("token-issued", sub=jwt_like())).slug == "forbidden-field"


def test_ordinary_values_are_not_secret_shaped() -> None:
    for value in [
        "https://as.example.com/realms/master",
        "550e8400-e29b-41d4-a716-446655440000",
        "756E69717565206964656E746966696572",
        "a" * 64,
        "0123456789abcdef" * 4,
        "s6BhdRkqt3",
        "client_secret_basic",
        "openid.profile.email",
        "Bearer",
    ]:
        assert secret_shape(value) is None, value


def test_key_that_looks_like_a_secret_is_redacted_in_the_pointer() -> None:
    event = sample_event("token-issued", resource=[{OPAQUE_TOKEN: 1}])
    error = refusal(event)
    assert error.slug == "forbidden-field"
    assert OPAQUE_TOKEN not in error.pointer
    assert error.pointer == "/event/resource/0/[redacted]"


# -- hypothesis: generated valid events ---------------------------------------------------------

_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
_SCOPE = "".join(c for c in _ASCII if c not in '"\\')


def _text(kind: Text) -> st.SearchStrategy[str]:
    if kind.enum is not None:
        return st.sampled_from(kind.enum)
    alphabet: Any = st.characters(
        min_codepoint=0x20, max_codepoint=0x2FF, categories=["L", "N", "P", "Zs"]
    )
    if kind.pattern is not None:
        alphabet = _SCOPE if "x5b" in kind.pattern else _ASCII
    size = min(kind.max_bytes // 2, 24)
    return st.text(alphabet, min_size=1, max_size=size).filter(
        lambda s: s.isprintable() and secret_shape(s) is None
    )


def _value(kind: FieldKind, name: str) -> st.SearchStrategy[Any]:
    if isinstance(kind, Text):
        return _text(kind)
    if isinstance(kind, Time):
        return st.integers(0, NOW + 300 if kind.issued else MAX_TIME)
    if isinstance(kind, Boolean):
        return st.booleans()
    if isinstance(kind, TokenRef):
        return st.binary(min_size=32, max_size=32).map(
            lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
        )
    if isinstance(kind, TextList):
        return st.lists(_text(kind.item), min_size=kind.min_items, max_size=4, unique=True)
    if isinstance(kind, SubjectId):
        plain = _text(Text(256))
        return st.one_of(
            plain,
            st.fixed_dictionaries({"format": st.just("opaque"), "id": plain}),
            st.fixed_dictionaries({"format": st.just("iss_sub"), "iss": plain, "sub": plain}),
        )
    assert isinstance(kind, Integer)
    return st.integers(kind.minimum, kind.maximum)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(EVENT_TYPES)))
    event: dict[str, Any] = {"type": name}
    for spec in (*COMMON_FIELDS, *EVENT_TYPES[name].fields):
        if spec.name == "type":
            continue
        if spec.required or draw(st.booleans()):
            event[spec.name] = draw(_value(spec.kind, spec.name))
    return event


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events())
def test_generated_valid_events_are_accepted_and_round_trip(event: dict[str, Any]) -> None:
    accept(event)
    expected = encode_deterministic(event)
    assert encode_deterministic(decode_json(json.dumps(event).encode())) == expected
    assert encode_deterministic(decode_cbor(cbor2.dumps(event))) == expected
    assert expected == canonical(event)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events(), st.data())
def test_generated_broken_events_are_refused(event: dict[str, Any], data: st.DataObject) -> None:
    how = data.draw(st.sampled_from(["drop", "extra", "retype", "secret"]))
    required = [n for n in EVENT_TYPES[event["type"]].required if n != "type"]
    if how == "drop":
        event.pop(data.draw(st.sampled_from(required)))
    elif how == "extra":
        event[data.draw(st.sampled_from(["x", "extra", "Iat", "types"]))] = 1
    elif how == "retype":
        name = data.draw(st.sampled_from(required))
        event[name] = [event[name]]
    else:
        event[data.draw(st.sampled_from(SECRET_NAMES))] = "value"
    with pytest.raises(EventError):
        accept(event)


# -- leaves ------------------------------------------------------------------------------------


def test_event_leaf_is_the_deterministic_encoding_of_its_map() -> None:
    event = sample_event("token-issued")
    event_bytes = encode_deterministic(event)
    signature = bytes(range(64))
    data = encode_event_leaf("as-prod", event_bytes, signature, 1_767_225_600_123)
    full: dict[str, Any] = {
        "v": 1,
        "submitter": "as-prod",
        "event": event,
        "signature": signature,
        "log_time": 1_767_225_600_123,
    }
    assert data == encode_deterministic(full) == cbor2.dumps(full, canonical=True)
    assert event_bytes in data
    leaf = parse_leaf(data)
    assert leaf == Leaf("as-prod", event, 1_767_225_600_123, signature=signature)
    assert event_signing_message(event_bytes) == EVENT_SIGNATURE_CONTEXT + event_bytes
    assert EVENT_SIGNATURE_CONTEXT == b"etch/event/v1\x00"


def test_set_leaf_round_trip_and_size_limit() -> None:
    claims = set_claims()
    data = encode_set_leaf("as-prod", "a.b.c", claims, 5)
    assert parse_leaf(data) == Leaf("as-prod", claims, 5, set="a.b.c")
    with pytest.raises(LeafError, match="at most"):
        encode_set_leaf("as-prod", "x" * 70_000, claims, 5)
    with pytest.raises(LeafError, match="at most"):
        encode_event_leaf("as-prod", encode_deterministic({"a": "b" * 65_500}), bytes(64), 1)


@pytest.mark.parametrize(
    "value",
    [
        {"v": 1},
        {"v": 2, "submitter": "a", "event": {}, "signature": bytes(64), "log_time": 1},
        {"v": 1, "submitter": "a", "event": {}, "signature": bytes(63), "log_time": 1},
        {"v": 1, "submitter": 3, "event": {}, "signature": bytes(64), "log_time": 1},
        {"v": 1, "submitter": "a", "event": [], "signature": bytes(64), "log_time": 1},
        {"v": 1, "submitter": "a", "event": {}, "signature": bytes(64), "log_time": -1},
        {"v": 1, "submitter": "a", "event": {}, "set": 5, "log_time": 1},
        {"v": 1, "submitter": "a", "event": {}, "set": "x", "signature": bytes(64), "log_time": 1},
        [1, 2],
    ],
)
def test_parse_leaf_refuses_other_shapes(value: Any) -> None:
    with pytest.raises(LeafError):
        parse_leaf(encode_deterministic(value))


def test_parse_leaf_refuses_non_deterministic_bytes() -> None:
    data = cbor2.dumps({"submitter": "a", "v": 1})  # keys in insertion order, not sorted
    assert data != encode_deterministic({"v": 1, "submitter": "a"})
    with pytest.raises(LeafError):
        parse_leaf(data)


# -- SET claims --------------------------------------------------------------------------------


def test_set_claims_accepted_and_indexed() -> None:
    claims = set_claims()
    check_no_secrets(claims)
    uris = validate_set_claims(claims, now=NOW)
    assert len(uris) == 2
    assert set_lookup_keys(claims) == (
        ("type", "session-revoked"),
        ("type", "token-revoked"),
        ("subject", "pseudonym-7"),
        ("token_ref", REF_A),
        ("client_id", "client-1"),
    )


SET_BAD: list[tuple[str, dict[str, Any]]] = [
    ("no iss", {"iss": None}),
    ("no jti", {"jti": None}),
    ("no iat", {"iat": None}),
    ("future iat", {"iat": NOW + 1000}),
    ("no events", {"events": None}),
    ("empty events", {"events": {}}),
    ("event type not a URI", {"events": {"session-revoked": {}}}),
    ("event payload not an object", {"events": {"https://e.example/x": 1}}),
    ("unknown claim", {"nonce": "x"}),
    ("aud not text", {"aud": 5}),
    ("sub_id not an object", {"sub_id": "x"}),
    ("email subject", {"sub_id": {"format": "email", "email": "a@example.com"}}),
    (
        "email subject nested",
        {"sub_id": {"format": "complex", "user": {"format": "phone_number", "phone_number": "+1"}}},
    ),
]


@pytest.mark.parametrize(("case", "change"), SET_BAD, ids=[c for c, _ in SET_BAD])
def test_bad_set_claims_are_refused(case: str, change: dict[str, Any]) -> None:
    with pytest.raises(EventError):
        validate_set_claims(set_claims(**change), now=NOW)


def test_secrets_in_set_claims_are_refused() -> None:
    claims = set_claims(
        events={
            "https://schemas.openid.net/secevent/oauth/event-type/token-revoked": {
                "subject": {"subject_type": "oauth_token", "token": "7265667265736820746F6B656E"}
            }
        }
    )
    with pytest.raises(EventError) as info:
        check_no_secrets(claims)
    assert info.value.slug == "forbidden-field"
    assert info.value.pointer.endswith("/subject/token")


# -- schema --------------------------------------------------------------------------------------


def test_schema_matches_the_declarations() -> None:
    schema = event_schema()
    branches = {b["title"]: b for b in schema["oneOf"]}
    assert set(branches) == set(EVENT_TYPES)
    for name, event_type in EVENT_TYPES.items():
        branch = branches[name]
        assert branch["additionalProperties"] is False
        assert set(branch["properties"]) == set(event_type.by_name)
        assert set(branch["required"]) == set(event_type.required)
        assert branch["properties"]["type"] == {
            "const": name,
            "description": "event type short name",
        }
        assert branch["x-etch-type-uri"] == event_type.uri
    json.dumps(schema)  # serialisable as is
    envelope = envelope_schema()
    assert envelope["required"] == ["event", "signature"]
    assert envelope["properties"]["event"] == schema


def test_schema_constraints_hold_for_the_samples() -> None:
    """A small structural check of each sample against its branch (types, enums, bounds)."""
    branches = {b["title"]: b for b in event_schema()["oneOf"]}
    for name in EVENT_TYPES:
        event = sample_event(name)
        branch = branches[name]
        for field_name, value in event.items():
            prop = branch["properties"][field_name]
            if "enum" in prop:
                assert value in prop["enum"], (name, field_name)
            if prop.get("type") == "integer":
                assert prop["minimum"] <= value <= prop["maximum"]
            if prop.get("type") == "array":
                assert prop["minItems"] <= len(value) <= prop["maxItems"]
            if prop.get("type") == "string":
                assert prop.get("minLength", 1) <= len(value) <= prop.get("maxLength", 43)
