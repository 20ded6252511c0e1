"""The OpenAPI 3.1 document of the log's HTTP API, served at ``GET /openapi.json``.

Written by hand from the routes in :mod:`server.app` so that it documents exactly what the log
promises (formats, limits, problem types), not what a framework infers.
"""

from __future__ import annotations

from typing import Any

from server.problems import PROBLEM_TYPES

__all__ = ["openapi_document", "problem_schema"]

_B64 = {"type": "string", "contentEncoding": "base64", "description": "standard base64"}
_HASH = {**_B64, "description": "32-byte SHA-256 hash, standard base64"}
_SIZE = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}


def problem_schema() -> dict[str, Any]:
    """Return the JSON Schema of an RFC 9457 problem document with Etch's type URNs."""
    return {
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "enum": sorted(t.uri for t in PROBLEM_TYPES.values())},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "pointer": {"type": "string", "description": "JSON pointer to the refused field"},
        },
    }


def _problem_responses(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        out[str(status)] = {
            "description": ", ".join(
                sorted(t.slug for t in PROBLEM_TYPES.values() if t.status == status)
            ),
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
    return out


def _query(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string", "pattern": "^(0|[1-9][0-9]{0,18})$"},
    }


def openapi_document(origin: str) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document for the log with this origin."""
    receipt_schema = {"$ref": "#/components/schemas/SubmitResult"}
    event_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Event"}},
            "application/cbor": {"schema": {"$ref": "#/components/schemas/Event"}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Etch transparency log",
            "version": "1",
            "description": (
                f"Log {origin}. Reads follow C2SP tlog-tiles; hashes are standard base64 in JSON "
                "and lowercase hex in URLs; errors are RFC 9457 problem details."
            ),
        },
        "paths": {
            "/checkpoint": {
                "get": {
                    "summary": "Newest published checkpoint (C2SP signed note)",
                    "responses": {
                        "200": {"description": "checkpoint", "content": {"text/plain": {}}},
                        **_problem_responses(503),
                    },
                }
            },
            "/tile/{path}": {
                "get": {
                    "summary": "Hash tile or entry bundle (C2SP tlog-tiles)",
                    "parameters": [
                        {
                            "name": "path",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "<L>/<N>[.p/<W>] or entries/<N>[.p/<W>]",
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "tile bytes",
                            "content": {"application/octet-stream": {}},
                        },
                        **_problem_responses(404),
                    },
                }
            },
            "/v1/events": {
                "post": {
                    "summary": "Append one event and receive its receipt",
                    "requestBody": event_body,
                    "responses": {
                        "201": {
                            "description": "new entry",
                            "content": {"application/json": {"schema": receipt_schema}},
                        },
                        "200": {
                            "description": "duplicate of an earlier entry",
                            "content": {"application/json": {"schema": receipt_schema}},
                        },
                        **_problem_responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/v1/events/batch": {
                "post": {
                    "summary": "Append an array of events; one result or problem each, in order",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "maxItems": 1000,
                                    "items": {"$ref": "#/components/schemas/Event"},
                                }
                            },
                            "application/cbor": {"schema": {"type": "array", "maxItems": 1000}},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "results",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "results": {
                                                "type": "array",
                                                "items": {
                                                    "oneOf": [
                                                        receipt_schema,
                                                        {"$ref": "#/components/schemas/Problem"},
                                                    ]
                                                },
                                            }
                                        },
                                    }
                                }
                            },
                        },
                        **_problem_responses(400, 413, 415, 503),
                    },
                }
            },
            "/v1/proof/inclusion": {
                "get": {
                    "summary": "Inclusion proof by index or leaf hash",
                    "parameters": [
                        _query("index", "leaf index"),
                        {
                            "name": "leaf_hash",
                            "in": "query",
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        },
                        _query("tree_size", "tree size (default: the published checkpoint's)"),
                    ],
                    "responses": {
                        "200": {
                            "description": "proof",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/InclusionProof"}
                                }
                            },
                        },
                        **_problem_responses(400, 404, 503),
                    },
                }
            },
            "/v1/proof/consistency": {
                "get": {
                    "summary": "Consistency proof between two tree sizes",
                    "parameters": [
                        _query("first", "older tree size", required=True),
                        _query("second", "newer tree size", required=True),
                    ],
                    "responses": {
                        "200": {
                            "description": "proof",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ConsistencyProof"}
                                }
                            },
                        },
                        **_problem_responses(400, 503),
                    },
                }
            },
            "/v1/entries/{index}": {
                "get": {
                    "summary": "One entry: exact leaf bytes and decoded content",
                    "parameters": [
                        {
                            "name": "index",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "entry",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Entry"}
                                }
                            },
                        },
                        **_problem_responses(400, 404),
                    },
                }
            },
            "/v1/receipt/{index}": {
                "get": {
                    "summary": "C2SP tlog-proof receipt against the newest published checkpoint",
                    "parameters": [
                        {
                            "name": "index",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "receipt", "content": {"text/plain": {}}},
                        **_problem_responses(400, 404, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "200 when a verified checkpoint is at hand, else 503",
                    "responses": {
                        "200": {"description": "healthy"},
                        "503": {"description": "failing, with the reason"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1"}},
                }
            },
        },
        "components": {
            "schemas": {
                "Problem": problem_schema(),
                "Event": {
                    "type": "object",
                    "description": (
                        "A map with text keys; no floats, tags or duplicate keys; "
                        "depth, size and item limits apply."
                    ),
                },
                "SubmitResult": {
                    "type": "object",
                    "required": ["index", "leaf_hash", "checkpoint", "inclusion_proof", "receipt"],
                    "properties": {
                        "index": _SIZE,
                        "leaf_hash": _HASH,
                        "duplicate": {"type": "boolean"},
                        "tree_size": _SIZE,
                        "checkpoint": {
                            "type": "string",
                            "description": "signed note the proof is against",
                        },
                        "inclusion_proof": {"type": "array", "items": _HASH},
                        "receipt": {"type": "string", "description": "C2SP tlog-proof text"},
                    },
                },
                "InclusionProof": {
                    "type": "object",
                    "properties": {
                        "index": _SIZE,
                        "tree_size": _SIZE,
                        "leaf_hash": _HASH,
                        "proof": {"type": "array", "items": _HASH},
                    },
                },
                "ConsistencyProof": {
                    "type": "object",
                    "properties": {
                        "first": _SIZE,
                        "second": _SIZE,
                        "proof": {"type": "array", "items": _HASH},
                    },
                },
                "Entry": {
                    "type": "object",
                    "properties": {
                        "index": _SIZE,
                        "leaf_hash": _HASH,
                        "log_time": {"type": "integer"},
                        "entry": _B64,
                        "event": {},
                    },
                },
            }
        },
    }
