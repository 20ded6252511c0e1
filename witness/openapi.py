"""The OpenAPI 3.1 document of the witness's HTTP API, served at ``GET /openapi.json``.

Written by hand from the routes of :mod:`witness.http` (a test checks that the two list the
same paths and methods), so it states what the witness promises: the C2SP tlog-witness
``add-checkpoint`` exchange in text (errors as ``text/plain``, a 409 size conflict as
``text/x.tlog.size``), the monitoring checkpoint, and the JSON routes whose errors are RFC 9457
problem documents with ``urn:etch:error:witness-*`` types.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_HEX_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_SIZE = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_DECIMAL = {"type": "string", "pattern": "^(0|[1-9][0-9]{0,18})$"}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}
}

_STATUS_TEXT = {
    400: "bad-request: a malformed body, note or checkpoint",
    403: "bad-log-signature or log-blocked",
    404: "unknown-log: an origin, hash or record this witness does not know",
    409: "size-conflict or root-conflict",
    413: "payload-too-large: the body is over the configured limit",
    422: "proof-refused: the consistency proof does not verify",
    429: "rate-limited",
    503: "unavailable: the database does not answer",
}


def _errors(*statuses: int, problems: bool) -> dict[str, Any]:
    """Error answers: problem documents (JSON routes) or one text line (tlog-witness)."""
    out: dict[str, Any] = {}
    for status in statuses:
        answer: dict[str, Any] = {
            "description": _STATUS_TEXT[status],
            "content": _PROBLEM if problems else _TEXT,
        }
        if status == 409 and not problems:
            # tlog-witness: a size conflict answers the witness's size as "<size>\n".
            answer["content"] = {"text/x.tlog.size": {"schema": {"type": "string"}}, **_TEXT}
        if status in (429, 503):
            answer["headers"] = _RETRY_AFTER
        out[str(status)] = answer
    return out


def _origin_hash_parameter() -> dict[str, Any]:
    return {
        "name": "origin_hash",
        "in": "path",
        "required": True,
        "description": "lowercase hex SHA-256 of a followed log's origin line",
        "schema": {"type": "string"},
    }


def _page_parameters() -> list[dict[str, Any]]:
    return [
        {
            "name": "after",
            "in": "query",
            "required": False,
            "description": "return records with an id above this one (default 0)",
            "schema": _DECIMAL,
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "most records returned, 1 to 1000 (default 100)",
            "schema": _DECIMAL,
        },
    ]


def _records(key: str, summary: str, *, by_origin: bool) -> dict[str, Any]:
    parameters = _page_parameters()
    if by_origin:
        parameters.insert(0, _origin_hash_parameter())
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "records in id order; next_after is null on the last page",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": [key, "next_after"],
                                "properties": {
                                    key: {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Record"},
                                    },
                                    "next_after": {"type": ["integer", "null"]},
                                },
                            }
                        }
                    },
                },
                **_errors(400, 404, 503, problems=True),
            },
        }
    }


def _schemas() -> dict[str, Any]:
    return {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string", "pattern": "^urn:etch:error:witness-[a-z-]+$"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
            },
        },
        "Record": {
            "type": "object",
            "required": ["id", "origin", "origin_hash", "kind", "recorded_at", "document"],
            "properties": {
                "id": {"type": "integer"},
                "origin": {"type": "string"},
                "origin_hash": _HEX_HASH,
                "kind": {"type": "string"},
                "recorded_at": {"type": "integer", "description": "POSIX milliseconds"},
                "document": {"type": "object", "description": "the stored JSON document"},
            },
        },
        "CheckResult": {
            "type": "object",
            "required": [
                "origin",
                "tree_size",
                "witness_tree_size",
                "consistent",
                "reason",
                "evidence_id",
            ],
            "properties": {
                "origin": {"type": "string"},
                "tree_size": _SIZE,
                "witness_tree_size": {"type": ["integer", "null"], "minimum": 0},
                "consistent": {
                    "type": ["boolean", "null"],
                    "description": "null when the witness cannot tell",
                },
                "reason": {"type": "string"},
                "evidence_id": {"type": ["integer", "null"]},
            },
        },
    }


def _logs_schema() -> dict[str, Any]:
    log = {
        "type": "object",
        "required": ["origin", "origin_hash", "vkeys", "url", "qpd", "tree_size", "evidence"],
        "properties": {
            "origin": {"type": "string"},
            "origin_hash": _HEX_HASH,
            "vkeys": {"type": "array", "items": {"type": "string"}},
            "url": {"type": ["string", "null"]},
            "qpd": {"type": ["number", "null"]},
            "tree_size": {"type": ["integer", "null"], "minimum": 0},
            "evidence": {"type": "integer", "minimum": 0},
        },
    }
    return {
        "type": "object",
        "required": ["witness", "logs"],
        "properties": {
            "witness": {
                "type": "object",
                "required": ["name", "vkey"],
                "properties": {"name": {"type": "string"}, "vkey": {"type": "string"}},
            },
            "logs": {"type": "array", "items": log},
        },
    }


def _tlog_witness_paths() -> dict[str, Any]:
    return {
        "/add-checkpoint": {
            "post": {
                "summary": "C2SP tlog-witness add-checkpoint: cosign a checkpoint",
                "requestBody": {
                    "required": True,
                    "description": (
                        "'old <size>' line, consistency proof lines (standard base64 hashes), "
                        "a blank line, then the log-signed checkpoint note"
                    ),
                    "content": _TEXT,
                },
                "responses": {
                    "200": {"description": "the cosignature line(s)", "content": _TEXT},
                    **_errors(400, 403, 404, 409, 413, 422, 429, 503, problems=False),
                },
            }
        },
        "/{origin_hash}/checkpoint": {
            "get": {
                "summary": "the latest checkpoint this witness cosigned for a log",
                "parameters": [_origin_hash_parameter()],
                "responses": {
                    "200": {"description": "the cosigned checkpoint note", "content": _TEXT},
                    **_errors(404, 503, problems=False),
                },
            }
        },
    }


def openapi_document(name: str) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of the witness whose key name is ``name``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Etch witness",
            "version": "1",
            "description": (
                f"Witness {name}: C2SP tlog-witness cosigning, gossip checks and fork evidence."
            ),
        },
        "paths": {
            **_tlog_witness_paths(),
            "/check": {
                "post": {
                    "summary": "is this log-signed checkpoint consistent with what was seen?",
                    "requestBody": {"required": True, "content": _TEXT},
                    "responses": {
                        "200": {
                            "description": "the answer",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/CheckResult"}
                                }
                            },
                        },
                        **_errors(400, 403, 404, 413, 429, 503, problems=True),
                    },
                }
            },
            "/evidence": _records("evidence", "evidence records of every log", by_origin=False),
            "/evidence/{origin_hash}": _records(
                "evidence", "evidence records of one log", by_origin=True
            ),
            "/evidence/{origin_hash}/{record_id}": {
                "get": {
                    "summary": "one evidence document, byte for byte as stored",
                    "parameters": [
                        _origin_hash_parameter(),
                        {
                            "name": "record_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the evidence document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(404, 503, problems=True),
                    },
                }
            },
            "/refused": _records("refused", "refused-checkpoint records", by_origin=False),
            "/refused/{origin_hash}": _records(
                "refused", "refused-checkpoint records of one log", by_origin=True
            ),
            "/logs": {
                "get": {
                    "summary": "this witness's name and vkey, and every followed log",
                    "responses": {
                        "200": {
                            "description": "identity and logs",
                            "content": {"application/json": {"schema": _logs_schema()}},
                        },
                        **_errors(503, problems=True),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "200 when the database answers",
                    "responses": {
                        "200": {
                            "description": "healthy",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status"],
                                        "properties": {"status": {"const": "ok"}},
                                    }
                                }
                            },
                        },
                        **_errors(503, problems=True),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition",
                    "responses": {"200": {"description": "metrics", "content": _TEXT}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/explorer": {
                "get": {
                    "summary": "the witness page (HTML)",
                    "responses": {
                        "200": {
                            "description": "HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        "503": {"description": "the database does not answer"},
                    },
                }
            },
            "/explorer/static/{name}": {
                "get": {
                    "summary": "a static asset of the witness page",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "the asset (CSS or JavaScript)"},
                        "404": {"description": "no such asset"},
                    },
                }
            },
        },
        "components": {"schemas": _schemas()},
    }
