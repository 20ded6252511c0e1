"""OAuth audit events: the SET-shaped event model, its strict validation and the no-secrets rule.

An event is a map in the vocabulary of Security Event Tokens (RFC 8417), flattened to one event
per map (ARCHITECTURE.md "Events")::

    {"iss": "https://as.example.com", "jti": "0b6c4f7e-...", "iat": 1767225600,
     "type": "token-issued", "client_id": "s6BhdRkqt3", "sub": "pseudonym-1234",
     "token_type": "access_token", "grant_type": "authorization_code",
     "scope": ["openid", "profile"], "exp": 1767229200,
     "token_ref": "-bfU429PR50gUa3RLbpGgosKKPkwMRgFyt9OMlQb4OQ"}

Common members: ``iss`` (text), ``jti`` (1-128 printable ASCII characters, unique per
submitter: a UUID is a good choice), ``iat`` (integer POSIX seconds, not negative and at most
:data:`MAX_CLOCK_SKEW` seconds in the future), optional ``toe`` (time of event, same rules),
``txn`` (transaction id), ``initiating_entity`` (CAEP: ``admin``, ``user``, ``policy``,
``system``), then ``type`` (a short name, :data:`EVENT_TYPES`), the client, a pseudonymous
subject and the type's own fields. Every type declares which of ``client_id`` and ``sub`` it
requires or allows. :func:`validate_event` refuses unknown types, unknown or missing fields,
wrong JSON types (``true`` is not an integer), empty, oversize or control-character strings,
oversize or repeated list items, and times out of range. It never rewrites anything: the map
it accepts is the map that is signed and logged, byte for byte in deterministic CBOR.

Subjects are pseudonyms: ``sub`` is a text pseudonym, or an RFC 9493 subject identifier of
format ``opaque`` (``{"format": "opaque", "id": ...}``) or ``iss_sub`` (``{"format":
"iss_sub", "iss": ..., "sub": ...}``). Formats that carry personal data (``email``,
``phone_number``, ``account``, ...) are refused: the log is append-only and cannot forget.

Tokens appear only as token references (:mod:`client.tokens`) in the fields of
:data:`TOKEN_REF_FIELDS`.

No secrets, ever (ARCHITECTURE.md invariant 6): :func:`check_no_secrets` walks the whole
submission, at any depth, before anything else looks at it, and refuses

* a map key that names a secret (:func:`is_secret_name`): ``access_token``, ``refresh_token``,
  ``id_token``, ``token``, any name ending in ``token``, ``code``, ``authorization_code``,
  ``device_code``, ``user_code``, ``client_secret``, ``code_verifier``, ``password``,
  ``assertion``, ``client_assertion``, ``private_key``, ``cookie``, any name containing
  ``secret``, ``password``, ``passwd``, ``passphrase``, ``assertion``, ``private_key`` ...;
* a text value (or key) shaped like a credential (:func:`secret_shape`): a compact JWS/JWE (three
  or five base64url segments whose first one is a JSON object), an HTTP ``Authorization`` value
  (``Bearer ...``, ``Basic ...``, ``DPoP ...``), a PEM private key, a well-known token prefix
  (``ory_at_``, ``ory_rt_``, ``ory_ac_``, ``ghp_``, ...), or an opaque bearer token: 32 or more
  characters of the token alphabet ``[A-Za-z0-9._~+/=-]`` mixing upper case, lower case and
  digits. The last rule does not apply to fields defined to hold a token reference (when the
  value is one) nor to subject pseudonyms (``sub``, and ``id``/``sub`` inside a subject
  identifier), which are hashes by design.

The claims of a SET received at ``POST /v1/sets`` are checked by :func:`validate_set_claims`
(RFC 8417 members, event type URIs, pseudonymous subjects only) after the same secret scan, and
indexed by :func:`set_lookup_keys`.

Refusals raise :class:`EventError` with the problem slug (``forbidden-field`` or ``bad-event``),
a detail that names the field and the rule but never the value, and the JSON pointer of the
field (a key that itself looks like a secret is shown as ``[redacted]``).

=====================  ===========================================================================
type                   URI
=====================  ===========================================================================
token-issued           https://schemas.openid.net/secevent/oauth/event-type/token-issued
token-refreshed        urn:etch:event:token-refreshed
token-revoked          https://schemas.openid.net/secevent/oauth/event-type/token-revoked
tokens-revoked         https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked
token-introspected     urn:etch:event:token-introspected
token-exchanged        urn:etch:event:token-exchanged
consent-granted        urn:etch:event:consent-granted
consent-updated        urn:etch:event:consent-updated
consent-revoked        urn:etch:event:consent-revoked
login-succeeded        https://schemas.openid.net/secevent/caep/event-type/session-established
login-failed           urn:etch:event:login-failed
session-revoked        https://schemas.openid.net/secevent/caep/event-type/session-revoked
device-authorization   urn:etch:event:device-authorization
client-registered      urn:etch:event:client-registered
client-updated         urn:etch:event:client-updated
client-disabled        https://schemas.openid.net/secevent/oauth/event-type/client-disabled
client-enabled         https://schemas.openid.net/secevent/oauth/event-type/client-enabled
client-credential-     https://schemas.openid.net/secevent/oauth/event-type/client-credential-changed
rotated
credential-change      https://schemas.openid.net/secevent/caep/event-type/credential-change
credential-compromise  https://schemas.openid.net/secevent/risc/event-type/credential-compromise
account-disabled       https://schemas.openid.net/secevent/risc/event-type/account-disabled
=====================  ===========================================================================

Standard URIs come from the OpenID Shared Signals documents: OAuth Event Types 1.0 (token
issued/revoked, tokens revoked, client disabled/enabled/credential changed), CAEP 1.0 (session
established, session revoked, credential change) and RISC 1.0 (credential compromise, account
disabled). ``login-succeeded`` maps to CAEP's *session established*, the closest standard
meaning. Types no specification defines use ``urn:etch:event:<name>``, Etch's own namespace.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeAlias

from client.tokens import is_token_ref
from server.codec import Value

__all__ = [
    "AUTH_METHODS",
    "COMMON_FIELDS",
    "CREDENTIAL_TYPES",
    "EVENT_TYPES",
    "GRANT_TYPES",
    "MAX_CLOCK_SKEW",
    "MAX_SET_EVENTS",
    "MAX_TIME",
    "SET_EVENT_PREFIX",
    "TOKEN_REF_FIELDS",
    "TOKEN_TYPES",
    "TOKEN_TYPE_URIS",
    "Boolean",
    "EventError",
    "EventType",
    "FieldKind",
    "FieldSpec",
    "Integer",
    "SubjectId",
    "Text",
    "TextList",
    "Time",
    "TokenRef",
    "check_no_secrets",
    "event_lookup_keys",
    "is_secret_name",
    "secret_shape",
    "set_lookup_keys",
    "subject_key",
    "type_name",
    "type_uri",
    "validate_event",
    "validate_set_claims",
]

MAX_CLOCK_SKEW: Final = 300
"""Seconds an ``iat`` or ``toe`` may lie in the future of the log's clock."""

MAX_TIME: Final = 253_402_300_799
"""Largest time in seconds any event field may carry (9999-12-31T23:59:59Z)."""

SET_EVENT_PREFIX: Final = "urn:etch:event:"
"""URI prefix of the event types that no specification defines."""

_OAUTH: Final = "https://schemas.openid.net/secevent/oauth/event-type/"
_CAEP: Final = "https://schemas.openid.net/secevent/caep/event-type/"
_RISC: Final = "https://schemas.openid.net/secevent/risc/event-type/"


class EventError(ValueError):
    """An event (or a SET's claims) was refused.

    ``slug`` is the problem type (``bad-event`` or ``forbidden-field``), ``detail`` names the
    rule and the field but never a value, ``pointer`` is the RFC 6901 JSON pointer of the field.
    """

    def __init__(self, slug: str, detail: str, pointer: str) -> None:
        super().__init__(f"{detail} (at {pointer!r})")
        self.slug = slug
        self.detail = detail
        self.pointer = pointer


# --- field kinds ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    """A non-empty text string of at most ``max_bytes`` UTF-8 bytes without control characters.

    ``pattern`` (a full match) and ``enum`` restrict it further; ``uri_extension`` also admits
    absolute URIs (``urn:``/``https:``) beside the enum, as RFC 6749 §4.5 does for grant types.
    """

    max_bytes: int = 256
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    uri_extension: bool = False
    regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = None if self.pattern is None else re.compile(f"(?:{self.pattern})\\Z")
        object.__setattr__(self, "regex", compiled)


@dataclass(frozen=True, slots=True)
class Integer:
    """An integer (never a boolean) in ``[minimum, maximum]``."""

    minimum: int
    maximum: int


@dataclass(frozen=True, slots=True)
class Time:
    """POSIX seconds. ``issued`` times (``iat``, ``toe``) may not be ahead of the log's clock
    by more than :data:`MAX_CLOCK_SKEW`; others (``exp``) only have to lie in ``[0, MAX_TIME]``.
    """

    issued: bool


@dataclass(frozen=True, slots=True)
class Boolean:
    """``true`` or ``false``."""


@dataclass(frozen=True, slots=True)
class TokenRef:
    """A token reference: 43 canonical base64url characters (:mod:`client.tokens`)."""


@dataclass(frozen=True, slots=True)
class TextList:
    """A list of ``min_items`` to ``max_items`` distinct :class:`Text` items."""

    item: Text
    max_items: int
    min_items: int = 1


@dataclass(frozen=True, slots=True)
class SubjectId:
    """A pseudonymous subject: text, or an RFC 9493 ``opaque`` / ``iss_sub`` identifier."""


FieldKind: TypeAlias = Text | Integer | Time | Boolean | TokenRef | TextList | SubjectId
"""What a field holds."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One member of an event: its name, kind, whether it is required, and what it means."""

    name: str
    kind: FieldKind
    required: bool
    description: str


@dataclass(frozen=True, slots=True)
class EventType:
    """One event type: short name, URI, where the URI is defined, and its own fields.

    ``fields`` lists the members beyond :data:`COMMON_FIELDS`, ``client_id`` and ``sub``
    included (each type says whether it requires them).
    """

    name: str
    uri: str
    source: str
    summary: str
    fields: tuple[FieldSpec, ...]
    by_name: Mapping[str, FieldSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        merged = {spec.name: spec for spec in COMMON_FIELDS}
        for spec in self.fields:
            if spec.name in merged:
                raise ValueError(f"event type {self.name} redefines {spec.name}")
            merged[spec.name] = spec
        object.__setattr__(self, "by_name", MappingProxyType(merged))

    @property
    def required(self) -> tuple[str, ...]:
        """Names of every required member, common ones included (``type`` too)."""
        return tuple(name for name, spec in self.by_name.items() if spec.required)


# --- vocabularies -----------------------------------------------------------------------------

_PRINTABLE_ASCII = r"[\x21-\x7e]+"
_SCOPE_CHARS = r"[\x21\x23-\x5b\x5d-\x7e]+"  # RFC 6749 §3.3 scope-token

TOKEN_TYPES: Final = ("access_token", "refresh_token", "id_token", "authorization_code")
"""What ``token_type`` names (RFC 6749 §1.4/§1.5/§1.3.1, OpenID Connect Core §2)."""

GRANT_TYPES: Final = (
    "authorization_code",
    "client_credentials",
    "refresh_token",
    "password",
    "implicit",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:ietf:params:oauth:grant-type:saml2-bearer",
    "urn:openid:params:grant-type:ciba",
)
"""Registered grant types (IANA OAuth Parameters); extension grants are absolute URIs."""

TOKEN_TYPE_URIS: Final = (
    "urn:ietf:params:oauth:token-type:access_token",
    "urn:ietf:params:oauth:token-type:refresh_token",
    "urn:ietf:params:oauth:token-type:id_token",
    "urn:ietf:params:oauth:token-type:saml1",
    "urn:ietf:params:oauth:token-type:saml2",
    "urn:ietf:params:oauth:token-type:jwt",
)
"""RFC 8693 §3 token type identifiers."""

AUTH_METHODS: Final = (
    "none",
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
)
"""Client authentication methods (RFC 7591 §2, RFC 8705 §2)."""

CREDENTIAL_TYPES: Final = (
    "password",
    "pin",
    "x509",
    "fido2-platform",
    "fido2-roaming",
    "fido-u2f",
    "verifiable-credential",
    "phone-voice",
    "phone-sms",
    "app",
)
"""CAEP 1.0 credential-change ``credential_type`` values."""

TOKEN_REF_FIELDS: Final = frozenset(
    {"token_ref", "parent_token_ref", "subject_token_ref", "actor_token_ref", "issued_token_ref"}
)
"""Members that hold token references (the only place a token may be named)."""

_SCOPES = TextList(Text(128, _SCOPE_CHARS), 100)
_URIS = TextList(Text(512, _PRINTABLE_ASCII), 16)
_REASON = Text(256)


def _f(name: str, kind: FieldKind, description: str, *, required: bool = False) -> FieldSpec:
    return FieldSpec(name, kind, required, description)


COMMON_FIELDS: Final = (
    _f("iss", Text(512, _PRINTABLE_ASCII), "issuer: the OAuth server", required=True),
    _f("jti", Text(128, _PRINTABLE_ASCII), "unique id per submitter (RFC 8417)", required=True),
    _f("iat", Time(issued=True), "issued at, POSIX seconds", required=True),
    _f("toe", Time(issued=True), "time of event, POSIX seconds (RFC 8417 §2.2)"),
    _f("txn", Text(128, _PRINTABLE_ASCII), "transaction id shared by related events"),
    _f("type", Text(64), "event type short name", required=True),
    _f(
        "initiating_entity",
        Text(16, enum=("admin", "user", "policy", "system")),
        "who caused the event (CAEP 1.0 §2)",
    ),
)
"""Members every event may carry."""


def _client(required: bool = True) -> FieldSpec:
    return _f("client_id", Text(256), "the OAuth client (RFC 6749 §2.2)", required=required)


def _sub(required: bool = True) -> FieldSpec:
    return _f("sub", SubjectId(), "pseudonymous subject", required=required)


def _ref(name: str, description: str, *, required: bool = True) -> FieldSpec:
    return _f(name, TokenRef(), description, required=required)


def _scope(required: bool = False, name: str = "scope") -> FieldSpec:
    return _f(name, _SCOPES, "scope tokens (RFC 6749 §3.3)", required=required)


def _type(name: str, uri: str, source: str, summary: str, *fields: FieldSpec) -> EventType:
    return EventType(name, uri, source, summary, tuple(fields))


def _etch(name: str) -> str:
    return SET_EVENT_PREFIX + name


_CLIENT_META = (
    _f("client_name", Text(256), "human-readable client name (RFC 7591 §2)"),
    _f("redirect_uris", _URIS, "redirection URIs (RFC 7591 §2)"),
    _f(
        "grant_types",
        TextList(Text(128, enum=GRANT_TYPES, uri_extension=True), 16),
        "grant types the client may use",
    ),
    _f(
        "token_endpoint_auth_method",
        Text(64, enum=AUTH_METHODS),
        "client authentication method",
    ),
    _scope(),
)

_TYPES: Final = (
    _type(
        "token-issued",
        _OAUTH + "token-issued",
        "OAuth Event Types 1.0 §3.1",
        "A token or authorization code was issued.",
        _client(),
        _sub(required=False),
        _f("token_type", Text(32, enum=TOKEN_TYPES), "what was issued", required=True),
        _ref("token_ref", "reference of the issued token"),
        _f(
            "grant_type",
            Text(128, enum=GRANT_TYPES, uri_extension=True),
            "grant used at the token endpoint (absent for codes)",
        ),
        _scope(),
        _f("exp", Time(issued=False), "expiry, POSIX seconds"),
        _ref(
            "parent_token_ref",
            "token this one derives from: the refresh token it rotates, or the code exchanged",
            required=False,
        ),
        _f("resource", _URIS, "resource indicators (RFC 8707)"),
    ),
    _type(
        "token-refreshed",
        _etch("token-refreshed"),
        "Etch",
        "A refresh token was used at the token endpoint (RFC 6749 §6).",
        _client(),
        _sub(required=False),
        _ref("token_ref", "reference of the refresh token presented"),
        _ref("issued_token_ref", "reference of the access token issued", required=False),
        _f("rotated", Boolean(), "whether the refresh token was replaced"),
        _scope(),
    ),
    _type(
        "token-revoked",
        _OAUTH + "token-revoked",
        "OAuth Event Types 1.0 §3.2",
        "One token was revoked (RFC 7009).",
        _client(),
        _sub(required=False),
        _ref("token_ref", "reference of the revoked token"),
        _f("token_type", Text(32, enum=TOKEN_TYPES), "what was revoked"),
        _f(
            "reason",
            Text(16, enum=("inactive", "too_many", "api", "user", "issuer")),
            "why (api: a revocation request, RFC 7009)",
        ),
    ),
    _type(
        "tokens-revoked",
        _OAUTH + "tokens-revoked",
        "OAuth Event Types 1.0 §3.3",
        "Every token of a subject (optionally for one client) was revoked.",
        _client(required=False),
        _sub(),
        _f("reason", Text(16, enum=("user", "issuer")), "who revoked them"),
    ),
    _type(
        "token-introspected",
        _etch("token-introspected"),
        "Etch",
        "A protected resource introspected a token (RFC 7662).",
        _client(),
        _sub(required=False),
        _ref("token_ref", "reference of the introspected token"),
        _f("active", Boolean(), "the introspection answer (RFC 7662 §2.2)", required=True),
        _f("token_type", Text(32, enum=TOKEN_TYPES), "what was introspected"),
        _scope(),
    ),
    _type(
        "token-exchanged",
        _etch("token-exchanged"),
        "Etch",
        "A token was exchanged for another (RFC 8693).",
        _client(),
        _sub(required=False),
        _ref("subject_token_ref", "reference of the subject token"),
        _ref("actor_token_ref", "reference of the actor token", required=False),
        _ref("issued_token_ref", "reference of the issued token"),
        _f(
            "requested_token_type",
            Text(64, enum=TOKEN_TYPE_URIS),
            "requested token type (RFC 8693 §2.1)",
        ),
        _f("subject_token_type", Text(64, enum=TOKEN_TYPE_URIS), "subject token type"),
        _f("issued_token_type", Text(64, enum=TOKEN_TYPE_URIS), "issued token type"),
        _f("audience", TextList(Text(256), 16), "audiences requested (RFC 8693 §2.1)"),
        _f("resource", _URIS, "resource indicators (RFC 8707)"),
        _scope(),
    ),
    _type(
        "consent-granted",
        _etch("consent-granted"),
        "Etch",
        "The subject granted a client access to scopes.",
        _client(),
        _sub(),
        _scope(required=True),
    ),
    _type(
        "consent-updated",
        _etch("consent-updated"),
        "Etch",
        "The scopes a subject granted a client changed.",
        _client(),
        _sub(),
        _scope(required=True),
        _scope(name="previous_scope"),
    ),
    _type(
        "consent-revoked",
        _etch("consent-revoked"),
        "Etch",
        "The subject withdrew a client's access (all of it, or the scopes listed).",
        _client(),
        _sub(),
        _scope(),
    ),
    _type(
        "login-succeeded",
        _CAEP + "session-established",
        "CAEP 1.0 (session established)",
        "The subject authenticated and a session was established.",
        _client(required=False),
        _sub(),
        _f("amr", TextList(Text(64), 16), "authentication methods (RFC 8176)"),
        _f("acr", Text(256), "authentication context class"),
    ),
    _type(
        "login-failed",
        _etch("login-failed"),
        "Etch",
        "An authentication attempt failed.",
        _client(required=False),
        _sub(required=False),
        _f(
            "reason",
            Text(
                32,
                enum=(
                    "invalid_credentials",
                    "unknown_subject",
                    "account_locked",
                    "account_disabled",
                    "credential_expired",
                    "mfa_failed",
                    "consent_denied",
                    "other",
                ),
            ),
            "why it failed",
            required=True,
        ),
        _f("amr", TextList(Text(64), 16), "authentication methods attempted (RFC 8176)"),
    ),
    _type(
        "session-revoked",
        _CAEP + "session-revoked",
        "CAEP 1.0 §3.1",
        "A session of the subject was ended.",
        _client(required=False),
        _sub(),
        _f("reason", _REASON, "why, for administrators"),
    ),
    _type(
        "device-authorization",
        _etch("device-authorization"),
        "Etch",
        "A device authorization request was answered (RFC 8628 §3.2).",
        _client(),
        _ref("token_ref", "reference of the device_code"),
        _scope(),
        _f("exp", Time(issued=False), "expiry of the device code, POSIX seconds"),
    ),
    _type(
        "client-registered",
        _etch("client-registered"),
        "Etch",
        "A client was registered (RFC 7591).",
        _client(),
        *_CLIENT_META,
    ),
    _type(
        "client-updated",
        _etch("client-updated"),
        "Etch",
        "A client's metadata changed (RFC 7592).",
        _client(),
        *_CLIENT_META,
    ),
    _type(
        "client-disabled",
        _OAUTH + "client-disabled",
        "OAuth Event Types 1.0 §3.4",
        "A client was disabled.",
        _client(),
        _f("reason", _REASON, "why, for administrators"),
    ),
    _type(
        "client-enabled",
        _OAUTH + "client-enabled",
        "OAuth Event Types 1.0 §3.5",
        "A disabled client was enabled again.",
        _client(),
    ),
    _type(
        "client-credential-rotated",
        _OAUTH + "client-credential-changed",
        "OAuth Event Types 1.0 §3.6",
        "One of a client's credentials was replaced.",
        _client(),
        _f(
            "credential_type",
            Text(32, enum=("client_secret", "jwks", "certificate")),
            "which credential",
            required=True,
        ),
    ),
    _type(
        "credential-change",
        _CAEP + "credential-change",
        "CAEP 1.0 §3.3",
        "A credential of the subject was created, changed, revoked or deleted.",
        _sub(),
        _f("credential_type", Text(32, enum=CREDENTIAL_TYPES), "which credential", required=True),
        _f(
            "change_type",
            Text(16, enum=("create", "revoke", "update", "delete")),
            "what happened",
            required=True,
        ),
        _f("friendly_name", Text(128), "the credential's display name"),
    ),
    _type(
        "credential-compromise",
        _RISC + "credential-compromise",
        "RISC 1.0 §2.7",
        "A credential of the subject is known to be compromised.",
        _sub(),
        _f("credential_type", Text(32, enum=CREDENTIAL_TYPES), "which credential", required=True),
    ),
    _type(
        "account-disabled",
        _RISC + "account-disabled",
        "RISC 1.0 §2.3",
        "The subject's account was disabled.",
        _sub(),
        _f("reason", Text(16, enum=("hijacking", "bulk-account")), "why (RISC 1.0 §2.3)"),
    ),
)

EVENT_TYPES: Final[Mapping[str, EventType]] = MappingProxyType({t.name: t for t in _TYPES})
"""Every event type, by short name."""

_BY_URI: Final = MappingProxyType({t.uri: t.name for t in _TYPES})


def type_uri(name: str) -> str:
    """Return the URI of the event type ``name``. Raises KeyError for an unknown type."""
    return EVENT_TYPES[name].uri


def type_name(uri: str) -> str | None:
    """Return the short name of the event type with this URI, or ``None`` if unknown."""
    return _BY_URI.get(uri)


# --- no secrets -------------------------------------------------------------------------------

_SECRET_NAMES: Final = frozenset(
    {
        "code",
        "authorization_code",
        "auth_code",
        "device_code",
        "user_code",
        "otp",
        "totp",
        "pin",
        "cookie",
        "authorization",
        "bearer",
        "jwt",
        "jws",
        "jwe",
        "credentials",
        "api_key",
        "apikey",
        "signing_key",
        "secret_key",
        "id_token_hint",
        "samlresponse",
        "saml_response",
        "dpop",
    }
)
_SECRET_PARTS: Final = (
    "secret",
    "password",
    "passwd",
    "passphrase",
    "assertion",
    "private_key",
    "privatekey",
    "verifier",
    "cookie",
)

_OPAQUE_TOKEN: Final = re.compile(
    r"(?=[^A-Z]*[A-Z])(?=[^a-z]*[a-z])(?=[^0-9]*[0-9])[A-Za-z0-9._~+/=-]{32,}\Z"
)
"""32+ characters of the token alphabet with an upper-case letter, a lower-case one, a digit."""
_B64URL_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]*\Z")
_PREFIXED: Final = re.compile(
    r"(?:(?:bearer|basic|dpop|mac|negotiate|gnap)\s+\S"  # an Authorization header value
    r"|ory_(?:at|rt|ac|pc|st)_|gh[pousr]_|github_pat_|glpat-|xox[bpa]-|[rs]k_(?:live|test)_)",
    re.IGNORECASE,
)
"""An HTTP Authorization value, or a well-known token prefix (Ory Hydra, GitHub, GitLab, ...)."""
_PREFIX_STARTS: Final = frozenset("bBdDmMnNgGoOxXrRsS")
"""First characters of what :data:`_PREFIXED` matches (a cheap filter before the regex)."""
_MIN_SECRET: Final = 8
"""Shorter text is never taken for a credential (``Bearer x`` is the shortest rule)."""
_SUBJECT_CONTAINERS: Final = frozenset({"sub", "sub_id", "subject"})
_REDACTED: Final = "[redacted]"
_OPAQUE: Final = "an opaque bearer token"
_NAME_VERDICTS: dict[str, bool] = {}
"""Memo of :func:`_refused_name` for the few distinct map keys events use (bounded)."""
_NAME_VERDICTS_MAX: Final = 4096


def is_secret_name(name: str) -> bool:
    """Tell whether a map key names something that must never be logged.

    Case-insensitive, ``-`` read as ``_``. Examples: ``access_token``, ``refreshToken``,
    ``token``, ``client_secret``, ``code_verifier``, ``password``, ``client_assertion``,
    ``device_code`` are secret names; ``token_ref``, ``token_type``, ``grant_type`` are not.
    """
    normal = name.lower().replace("-", "_")
    if normal in _SECRET_NAMES or normal.endswith("token"):
        return True
    return any(part in normal for part in _SECRET_PARTS)


def _refused_name(name: str) -> bool:
    """Tell whether a map key names a secret or is itself shaped like one (memoised)."""
    verdict = _NAME_VERDICTS.get(name)
    if verdict is None:
        verdict = is_secret_name(name) or secret_shape(name) is not None
        if len(_NAME_VERDICTS) < _NAME_VERDICTS_MAX and not verdict:
            _NAME_VERDICTS[name] = verdict
    return verdict


def _is_jose(text: str) -> bool:
    """Tell whether ``text`` is a compact JWS (3 parts) or JWE (5) with a JSON object header."""
    parts = text.split(".")
    if len(parts) not in (3, 5) or not parts[0]:
        return False
    if not all(_B64URL_SEGMENT.match(part) for part in parts):
        return False
    head = parts[0]
    try:
        raw = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
        header = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict)


def secret_shape(text: str, *, hashed: bool = False) -> str | None:
    """Return what credential ``text`` looks like, or ``None`` if it looks like none.

    ``hashed`` marks a field that holds hashes by design (a token reference, a subject
    pseudonym): the opaque-token rule is skipped there, the others still apply.
    Answers: ``"a JWT"``, ``"an HTTP Authorization value"``, ``"a private key"``,
    ``"a known token format"``, ``"an opaque bearer token"``.
    """
    if len(text) < _MIN_SECRET:
        return None
    # A JOSE header is a JSON object, so its base64url starts with "e" ("{" is 0x7b).
    if text[0] == "e" and "." in text and _is_jose(text):
        return "a JWT"
    prefixed = _PREFIXED.match(text) if text[0] in _PREFIX_STARTS else None
    if prefixed is not None:
        return (
            "an HTTP Authorization value"
            if " " in prefixed.group() or "\t" in prefixed.group()
            else "a known token format"
        )
    if "PRIVATE KEY" in text:
        return "a private key"
    if not hashed and len(text) >= 32 and _OPAQUE_TOKEN.match(text) is not None:
        return _OPAQUE
    return None


def _pointer_part(key: str) -> str:
    """Return ``key`` escaped for a JSON pointer, or ``[redacted]`` if it looks like a secret."""
    if secret_shape(key) is not None:
        return _REDACTED
    return key.replace("~", "~0").replace("/", "~1")


def check_no_secrets(value: Value, pointer: str = "") -> None:
    """Refuse ``value`` if any key names a secret or any text looks like a credential.

    Walks maps and lists at any depth (keys and values); ``pointer`` is the JSON pointer of
    ``value`` itself, used as the prefix of the field paths named in errors. Token-reference
    fields holding a token reference, and subject pseudonyms, are exempt from the opaque-token
    shape only (see the module docstring). Requires a value from :mod:`server.codec` (its
    nesting is already bounded).

    Raises EventError(forbidden-field) naming the field path, never its value.
    """
    _scan(value, pointer, None, False)


def _shape_refusal(shape: str, pointer: str) -> EventError:
    return EventError(
        "forbidden-field",
        f"the value looks like {shape}: raw credentials are never logged"
        " (log a token reference instead)",
        pointer or "/",
    )


def _exempt(key: str | None, text: str, in_subject: bool) -> bool:
    """Tell whether an opaque-token-shaped text is a hash by design where it stands."""
    if key in TOKEN_REF_FIELDS:
        return is_token_ref(text)
    return key == "sub" or (in_subject and key == "id")


def _scan(value: Value, pointer: str, key: str | None, in_subject: bool) -> None:
    kind = type(value)
    if kind is dict:
        assert isinstance(value, dict)
        subject = in_subject or key in _SUBJECT_CONTAINERS
        for name, item in value.items():
            if _refused_name(name):
                raise EventError(
                    "forbidden-field",
                    "this field names a secret (a raw token, code, password, client secret,"
                    " assertion or key) and is never logged",
                    f"{pointer}/{_pointer_part(name)}",
                )
            item_kind = type(item)
            if item_kind is str:
                assert isinstance(item, str)
                if len(item) >= _MIN_SECRET:
                    shape = secret_shape(item)
                    if shape is not None and not (
                        shape is _OPAQUE and _exempt(name, item, subject)
                    ):
                        raise _shape_refusal(shape, f"{pointer}/{_pointer_part(name)}")
            elif item_kind is dict or item_kind is list:
                _scan(item, f"{pointer}/{_pointer_part(name)}", name, subject)
    elif kind is list:
        assert isinstance(value, list)
        for index, item in enumerate(value):
            if type(item) is str:
                assert isinstance(item, str)
                shape = secret_shape(item)
                if shape is not None and not (shape is _OPAQUE and _exempt(key, item, in_subject)):
                    raise _shape_refusal(shape, f"{pointer}/{index}")
            elif type(item) is dict or type(item) is list:
                _scan(item, f"{pointer}/{index}", key, in_subject)
    elif kind is str:
        assert isinstance(value, str)
        shape = secret_shape(value)
        if shape is not None and not (shape is _OPAQUE and _exempt(key, value, in_subject)):
            raise _shape_refusal(shape, pointer)


# --- validation -------------------------------------------------------------------------------


def _fail(detail: str, pointer: str) -> EventError:
    return EventError("bad-event", detail, pointer)


def _check_text(value: Value, kind: Text, pointer: str) -> str:
    if type(value) is not str:
        raise _fail("must be a text string", pointer)
    assert isinstance(value, str)
    size = len(value)
    if not size:
        raise _fail("must not be empty", pointer)
    if size > kind.max_bytes or (not value.isascii() and len(value.encode()) > kind.max_bytes):
        raise _fail(f"must be at most {kind.max_bytes} bytes", pointer)
    if not value.isprintable():
        raise _fail("must not contain control characters", pointer)
    if (
        kind.enum is not None
        and value not in kind.enum
        and not (kind.uri_extension and _is_absolute_uri(value))
    ):
        raise _fail(f"must be one of {', '.join(kind.enum)}", pointer)
    if kind.regex is not None and kind.regex.match(value) is None:
        raise _fail("has characters this field does not allow", pointer)
    return value


_ABSOLUTE_URI: Final = re.compile(r"(?:urn:[A-Za-z0-9][A-Za-z0-9-]*:|https://)[\x21-\x7e]+\Z")


def _is_absolute_uri(value: str) -> bool:
    return _ABSOLUTE_URI.match(value) is not None


def _check_int(value: Value, minimum: int, maximum: int, pointer: str) -> int:
    if type(value) is not int:
        raise _fail("must be an integer", pointer)
    if not minimum <= value <= maximum:
        raise _fail(f"must be between {minimum} and {maximum}", pointer)
    return value


def _check_time(value: Value, kind: Time, now: int, pointer: str) -> None:
    if type(value) is not int:
        raise _fail("must be an integer number of seconds", pointer)
    if value < 0:
        raise _fail("must not be negative", pointer)
    limit = min(now + MAX_CLOCK_SKEW, MAX_TIME) if kind.issued else MAX_TIME
    if value > limit:
        if kind.issued:
            raise _fail(
                f"lies more than {MAX_CLOCK_SKEW} seconds in the future of the log's clock",
                pointer,
            )
        raise _fail(f"must be at most {MAX_TIME}", pointer)


def _check_list(value: Value, kind: TextList, pointer: str) -> None:
    if not isinstance(value, list):
        raise _fail("must be a list", pointer)
    if not kind.min_items <= len(value) <= kind.max_items:
        raise _fail(f"must hold {kind.min_items} to {kind.max_items} items", pointer)
    seen: set[str] = set()
    for index, item in enumerate(value):
        text = _check_text(item, kind.item, f"{pointer}/{index}")
        if text in seen:
            raise _fail("repeats an item", f"{pointer}/{index}")
        seen.add(text)


_SUBJECT_TEXT: Final = Text(256)
_SUBJECT_FORMATS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {"opaque": ("id",), "iss_sub": ("iss", "sub")}
)


def _check_subject(value: Value, pointer: str) -> None:
    if isinstance(value, str):
        _check_text(value, _SUBJECT_TEXT, pointer)
        return
    if not isinstance(value, dict):
        raise _fail("must be a text pseudonym or a subject identifier object", pointer)
    form = value.get("format")
    if not isinstance(form, str) or form not in _SUBJECT_FORMATS:
        raise _fail(
            "subject identifier format must be opaque or iss_sub (RFC 9493 formats that"
            " carry personal data are not accepted)",
            f"{pointer}/format",
        )
    members = _SUBJECT_FORMATS[form]
    for name in value:
        if name != "format" and name not in members:
            raise _fail(f"is not a member of a {form} subject identifier", f"{pointer}/{name}")
    for name in members:
        if name not in value:
            raise _fail(f"a {form} subject identifier needs {name}", f"{pointer}/{name}")
        _check_text(value[name], _SUBJECT_TEXT, f"{pointer}/{name}")


def _check_field(spec: FieldSpec, value: Value, now: int, pointer: str) -> None:
    kind = spec.kind
    if isinstance(kind, Text):
        _check_text(value, kind, pointer)
    elif isinstance(kind, Time):
        _check_time(value, kind, now, pointer)
    elif isinstance(kind, TokenRef):
        if not is_token_ref(value):
            raise _fail("must be a token reference (43 canonical base64url characters)", pointer)
    elif isinstance(kind, TextList):
        _check_list(value, kind, pointer)
    elif isinstance(kind, SubjectId):
        _check_subject(value, pointer)
    elif isinstance(kind, Boolean):
        if not isinstance(value, bool):
            raise _fail("must be true or false", pointer)
    else:
        _check_int(value, kind.minimum, kind.maximum, pointer)


def validate_event(value: Value, *, now: int, pointer: str = "") -> EventType:
    """Check that ``value`` is a valid event and return its type; never changes ``value``.

    ``now`` is the log's clock in POSIX seconds (for the future bound of ``iat`` and ``toe``);
    ``pointer`` is the JSON pointer of the event in the request (e.g. ``/event``). Run
    :func:`check_no_secrets` first: this function assumes no secret is present.

    Raises EventError(bad-event) naming the first field that breaks a rule.
    """
    if not isinstance(value, dict):
        raise _fail("an event must be a map", pointer or "/")
    name = value.get("type")
    if not isinstance(name, str) or name not in EVENT_TYPES:
        raise _fail(
            "type must be one of the event types of GET /v1/schema/events", f"{pointer}/type"
        )
    event_type = EVENT_TYPES[name]
    specs = event_type.by_name
    for key, item in value.items():
        spec = specs.get(key)
        if spec is None:
            raise _fail(f"is not a field of a {name} event", f"{pointer}/{_pointer_part(key)}")
        if key != "type":
            _check_field(spec, item, now, f"{pointer}/{key}")
    for required in event_type.required:
        if required not in value:
            raise _fail(f"a {name} event needs this field", f"{pointer}/{required}")
    return event_type


def subject_key(subject: Value) -> str | None:
    """Return the lookup value of a subject: the pseudonym text, the opaque ``id`` or the
    ``iss_sub`` ``sub``; ``None`` when ``subject`` is none of those."""
    if isinstance(subject, str):
        return subject
    if isinstance(subject, dict):
        for member in ("id", "sub"):
            found = subject.get(member)
            if isinstance(found, str):
                return found
    return None


def event_lookup_keys(event: Mapping[str, Value]) -> tuple[tuple[str, str], ...]:
    """Return the ``(kind, value)`` lookup keys of a validated event.

    Kinds: ``type`` (short name), ``client_id``, ``subject`` (:func:`subject_key`) and one
    ``token_ref`` per token-reference field, in that order.
    """
    keys: list[tuple[str, str]] = []
    name = event.get("type")
    if isinstance(name, str):
        keys.append(("type", name))
    client = event.get("client_id")
    if isinstance(client, str):
        keys.append(("client_id", client))
    subject = subject_key(event.get("sub"))
    if subject is not None:
        keys.append(("subject", subject))
    for member in sorted(TOKEN_REF_FIELDS):
        ref = event.get(member)
        if isinstance(ref, str):
            keys.append(("token_ref", ref))
    return tuple(keys)


# --- SET claims -------------------------------------------------------------------------------

_SET_MEMBERS: Final = frozenset(
    {"iss", "iat", "jti", "aud", "events", "txn", "toe", "sub", "sub_id"}
)
_PERSONAL_FORMATS: Final = frozenset({"email", "phone_number", "account"})
_EVENT_URI: Final = Text(256)
_AUDIENCE: Final = Text(512)
MAX_SET_EVENTS: Final = 16
"""Most event types one SET may carry."""


def _refuse_personal_subjects(value: Value, pointer: str) -> None:
    """Refuse RFC 9493 subject identifiers whose format carries personal data, at any depth."""
    if isinstance(value, dict):
        form = value.get("format")
        if isinstance(form, str) and form in _PERSONAL_FORMATS:
            raise _fail(
                "subject identifiers of formats email, phone_number and account carry personal"
                " data and are not accepted (use opaque or iss_sub pseudonyms)",
                f"{pointer}/format",
            )
        for name, item in value.items():
            _refuse_personal_subjects(item, f"{pointer}/{_pointer_part(name)}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_personal_subjects(item, f"{pointer}/{index}")


def validate_set_claims(claims: Value, *, now: int) -> tuple[str, ...]:
    """Check the claims of a SET (RFC 8417 §2.2) and return its event type URIs.

    Members: ``iss``, ``jti``, ``iat`` (required, with the rules of events), ``events`` (a map
    of 1 to 16 event type URIs to objects), optional ``aud`` (text or a list of text), ``txn``,
    ``toe``, ``sub`` (text) and ``sub_id`` (RFC 9493); nothing else. Subject identifiers of
    personal-data formats are refused anywhere. Run :func:`check_no_secrets` first.

    Raises EventError(bad-event) naming the first member that breaks a rule.
    """
    if not isinstance(claims, dict):
        raise _fail("the SET payload must be a JSON object", "/")
    for name in claims:
        if name not in _SET_MEMBERS:
            raise _fail("is not a SET claim this log accepts", f"/{_pointer_part(name)}")
    for spec in COMMON_FIELDS:
        if spec.name in ("type", "initiating_entity"):
            continue
        if spec.name in claims:
            _check_field(spec, claims[spec.name], now, f"/{spec.name}")
        elif spec.required:
            raise _fail("a SET needs this claim", f"/{spec.name}")
    if "aud" in claims:
        audience = claims["aud"]
        if isinstance(audience, list):
            _check_list(audience, TextList(_AUDIENCE, 16), "/aud")
        else:
            _check_text(audience, _AUDIENCE, "/aud")
    if "sub" in claims:
        _check_text(claims["sub"], _SUBJECT_TEXT, "/sub")
    if "sub_id" in claims and not isinstance(claims["sub_id"], dict):
        raise _fail("must be a subject identifier object (RFC 9493)", "/sub_id")
    events = claims.get("events")
    if not isinstance(events, dict) or not 1 <= len(events) <= MAX_SET_EVENTS:
        raise _fail(f"events must map 1 to {MAX_SET_EVENTS} event type URIs to objects", "/events")
    for uri, payload in events.items():
        pointer = f"/events/{_pointer_part(uri)}"
        _check_text(uri, _EVENT_URI, pointer)
        if not _is_absolute_uri(uri):
            raise _fail("an event type is an absolute URI", pointer)
        if not isinstance(payload, dict):
            raise _fail("an event's payload is an object", pointer)
    _refuse_personal_subjects(claims, "")
    return tuple(events)


def _collect(value: Value, keys: list[tuple[str, str]]) -> None:
    """Add the client ids and token references found at any depth of an event payload."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name == "client_id" and isinstance(item, str):
                keys.append(("client_id", item))
            elif name in TOKEN_REF_FIELDS and is_token_ref(item):
                assert isinstance(item, str)
                keys.append(("token_ref", item))
            else:
                _collect(item, keys)
    elif isinstance(value, list):
        for item in value:
            _collect(item, keys)


def set_lookup_keys(claims: Mapping[str, Value]) -> tuple[tuple[str, str], ...]:
    """Return the lookup keys of validated SET claims.

    ``type``: the short name of each known event URI, else the URI; ``subject``: from
    ``sub_id`` (its ``id`` or ``sub``, or its ``user`` member's for a complex identifier), else
    ``sub``; ``client_id`` and ``token_ref``: members of those names (token references only)
    at any depth of the events' payloads. Each pair once.
    """
    keys: list[tuple[str, str]] = []
    events = claims.get("events")
    if isinstance(events, dict):
        for uri in events:
            keys.append(("type", type_name(uri) or uri))
    sub_id = claims.get("sub_id")
    subject = subject_key(sub_id)
    if subject is None and isinstance(sub_id, dict):
        subject = subject_key(sub_id.get("user"))
    if subject is None:
        subject = subject_key(claims.get("sub"))
    if subject is not None:
        keys.append(("subject", subject))
    if isinstance(events, dict):
        for payload in events.values():
            _collect(payload, keys)
    return tuple(dict.fromkeys(keys))
