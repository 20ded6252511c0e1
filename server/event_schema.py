"""The published JSON Schema of OAuth events, generated from :mod:`server.events`.

Served at ``GET /v1/schema/events`` and embedded in ``GET /openapi.json``. The schema is built
from the same field declarations the validator uses, so the two cannot drift apart. It is
self-contained (no ``$ref``), JSON Schema draft 2020-12, one ``oneOf`` branch per event type,
each closed (``additionalProperties: false``) and tagged with the type's URI
(``x-etch-type-uri``) and the document defining it (``x-etch-source``).

What a schema cannot say is said in descriptions and enforced by the log: string limits are in
UTF-8 bytes (``maxLength`` gives the same number as an upper bound in characters); ``iat`` and
``toe`` may be at most 300 seconds ahead of the log's clock; no field anywhere may name or hold
a secret (:func:`server.events.check_no_secrets`).
"""

from __future__ import annotations

from typing import Any, Final

from server.events import (
    COMMON_FIELDS,
    EVENT_TYPES,
    MAX_CLOCK_SKEW,
    MAX_TIME,
    Boolean,
    EventType,
    FieldKind,
    FieldSpec,
    Integer,
    SubjectId,
    Text,
    TextList,
    Time,
    TokenRef,
)

__all__ = ["EVENT_SCHEMA_ID", "envelope_schema", "event_schema", "kind_schema"]

EVENT_SCHEMA_ID: Final = "urn:etch:schema:event:v1"
"""``$id`` of the event schema."""

_REF_PATTERN: Final = "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$"
_ABSOLUTE_URI_PATTERN: Final = "^(urn:[A-Za-z0-9][A-Za-z0-9-]*:|https://)[\\x21-\\x7e]+$"

_NO_SECRETS: Final = (
    "No member may name a secret (access_token, refresh_token, id_token, token, code, "
    "client_secret, code_verifier, password, assertion, private_key, ...) or hold a value "
    "shaped like one (a JWT, an Authorization header value, an opaque bearer token): such "
    "events are refused with 422 forbidden-field. Tokens appear only as token references: "
    'base64url-nopad(SHA-256("etch/token-ref/v1" || 0x00 || token)).'
)


def _text_schema(kind: Text) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": kind.max_bytes}
    if kind.pattern is not None:
        schema["pattern"] = f"^{kind.pattern}$"
    if kind.enum is not None:
        if kind.uri_extension:
            return {
                **schema,
                "anyOf": [{"enum": list(kind.enum)}, {"pattern": _ABSOLUTE_URI_PATTERN}],
            }
        schema["enum"] = list(kind.enum)
    return schema


def kind_schema(kind: FieldKind) -> dict[str, Any]:
    """Return the JSON Schema of one field kind."""
    if isinstance(kind, Text):
        return _text_schema(kind)
    if isinstance(kind, Time):
        schema: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": MAX_TIME}
        if kind.issued:
            schema["description"] = (
                f"POSIX seconds; at most {MAX_CLOCK_SKEW} s ahead of the log's clock"
            )
        else:
            schema["description"] = "POSIX seconds"
        return schema
    if isinstance(kind, Boolean):
        return {"type": "boolean"}
    if isinstance(kind, TokenRef):
        return {
            "type": "string",
            "pattern": _REF_PATTERN,
            "description": 'token reference: base64url-nopad(SHA-256("etch/token-ref/v1" || '
            "0x00 || token))",
        }
    if isinstance(kind, TextList):
        return {
            "type": "array",
            "items": _text_schema(kind.item),
            "minItems": kind.min_items,
            "maxItems": kind.max_items,
            "uniqueItems": True,
        }
    if isinstance(kind, SubjectId):
        text = {"type": "string", "minLength": 1, "maxLength": 256}
        return {
            "description": "pseudonymous subject: text, or an RFC 9493 subject identifier of "
            "format opaque or iss_sub (formats carrying personal data are refused)",
            "oneOf": [
                text,
                {
                    "type": "object",
                    "required": ["format", "id"],
                    "additionalProperties": False,
                    "properties": {"format": {"const": "opaque"}, "id": text},
                },
                {
                    "type": "object",
                    "required": ["format", "iss", "sub"],
                    "additionalProperties": False,
                    "properties": {"format": {"const": "iss_sub"}, "iss": text, "sub": text},
                },
            ],
        }
    assert isinstance(kind, Integer)
    return {"type": "integer", "minimum": kind.minimum, "maximum": kind.maximum}


def _field_schema(spec: FieldSpec) -> dict[str, Any]:
    schema = kind_schema(spec.kind)
    description = spec.description
    if "description" in schema:
        description = f"{description}; {schema['description']}"
    return {**schema, "description": description}


def _type_schema(event_type: EventType) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for spec in (*COMMON_FIELDS, *event_type.fields):
        properties[spec.name] = _field_schema(spec)
    properties["type"] = {"const": event_type.name, "description": "event type short name"}
    return {
        "title": event_type.name,
        "description": f"{event_type.summary} Type URI: {event_type.uri}",
        "type": "object",
        "required": list(event_type.required),
        "additionalProperties": False,
        "properties": properties,
        "x-etch-type-uri": event_type.uri,
        "x-etch-source": event_type.source,
    }


def event_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of one event: one branch per event type."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": EVENT_SCHEMA_ID,
        "title": "Etch OAuth audit event",
        "description": (
            "A SET-shaped event (RFC 8417 vocabulary), one type per event. No floats anywhere. "
            + _NO_SECRETS
        ),
        "type": "object",
        "oneOf": [_type_schema(t) for t in EVENT_TYPES.values()],
    }


def envelope_schema() -> dict[str, Any]:
    """Return the JSON Schema of the body of ``POST /v1/events``: an event and its signature."""
    return {
        "type": "object",
        "required": ["event", "signature"],
        "additionalProperties": False,
        "description": (
            'The submitter\'s Ed25519 signature is over b"etch/event/v1\\x00" followed by the '
            "RFC 8949 §4.2.1 deterministic CBOR encoding of the event; standard base64 in JSON, "
            "a 64-byte byte string in CBOR."
        ),
        "properties": {
            "event": event_schema(),
            "signature": {
                "type": "string",
                "contentEncoding": "base64",
                "minLength": 88,
                "maxLength": 88,
                "description": "Ed25519 signature, 64 bytes, standard base64",
            },
        },
    }
