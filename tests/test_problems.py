"""Tests of server.problems: the RFC 9457 problem table, responses and Starlette handlers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.codec import CodecError, Limits, decode_cbor, decode_deterministic, decode_json
from server.problems import (
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPES,
    Problem,
    ProblemType,
    exception_handlers,
    problem_from_codec_error,
    problem_from_http_exception,
)

REQUIRED = {
    "bad-json": 400,
    "bad-cbor": 400,
    "bad-event": 422,
    "float-not-allowed": 422,
    "too-deep": 422,
    "payload-too-large": 413,
    "entry-too-large": 413,
    "unsupported-media-type": 415,
    "bad-parameter": 400,
    "index-out-of-range": 400,
    "tree-size-unknown": 400,
    "consistency-range": 400,
    "not-found": 404,
    "method-not-allowed": 405,
    "unavailable": 503,
    "rate-limited": 429,
    "unauthorized": 401,
    "forbidden": 403,
    "conflict": 409,
    "internal": 500,
    "duplicate-key": 422,
    "unsupported-type": 422,
}


def body_of(response: Response) -> dict[str, object]:
    payload = json.loads(bytes(response.body))
    assert isinstance(payload, dict)
    return payload


def test_table_holds_every_required_type_with_its_status() -> None:
    for slug, status in REQUIRED.items():
        assert PROBLEM_TYPES[slug].status == status, slug
    for slug, problem_type in PROBLEM_TYPES.items():
        assert problem_type.slug == slug
        assert problem_type.uri == f"urn:etch:error:{slug}"
        assert 400 <= problem_type.status <= 599
        assert problem_type.title


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        PROBLEM_TYPES["new"] = ProblemType("new", 400, "New")  # type: ignore[index]


def test_problem_body_and_response() -> None:
    problem = Problem("tree-size-unknown", "tree size 12 was never signed", instance="/v1/x")
    response = problem.to_response()
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert body_of(response) == {
        "type": "urn:etch:error:tree-size-unknown",
        "title": "Tree size not known to this log",
        "status": 400,
        "detail": "tree size 12 was never signed",
        "instance": "/v1/x",
    }
    assert "retry-after" not in response.headers
    assert problem.slug == "tree-size-unknown"
    assert problem.type == "urn:etch:error:tree-size-unknown"
    assert str(problem) == "tree-size-unknown: tree size 12 was never signed"


def test_problem_without_detail_has_only_standard_members() -> None:
    assert body_of(Problem("not-found").to_response()) == {
        "type": "urn:etch:error:not-found",
        "title": "Not found",
        "status": 404,
    }


def test_extension_members() -> None:
    problem = Problem("float-not-allowed", "no floats", extra={"pointer": "/iat", "n": [1, 2]})
    body = body_of(problem.to_response())
    assert body["pointer"] == "/iat"
    assert body["n"] == [1, 2]
    with pytest.raises(ValueError, match="shadow"):
        Problem("bad-event", extra={"status": 200})


def test_unknown_slug_and_bad_retry_after_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown problem type"):
        Problem("no-such-problem")
    with pytest.raises(ValueError, match="retry_after"):
        Problem("unavailable", retry_after=-1)


def test_retry_after_defaults_and_overrides() -> None:
    assert Problem("unavailable").to_response().headers["retry-after"] == "1"
    assert Problem("rate-limited").to_response().headers["retry-after"] == "1"
    response = Problem("unavailable", "sequencer catching up", retry_after=30).to_response()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert Problem("conflict", retry_after=5).to_response().headers["retry-after"] == "5"


def test_default_and_extra_headers() -> None:
    assert Problem("unauthorized").to_response().headers["www-authenticate"] == "Bearer"
    response = Problem("method-not-allowed", headers={"Allow": "GET, HEAD"}).to_response()
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "secret",
    [
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "ghp_9f8e7d6c5b4a39281706f5e4d3c2b1a0ffeeddcc",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    ],
)
def test_detail_redacts_token_like_values(secret: str) -> None:
    problem = Problem("bad-event", f"field access_token holds {secret} which is forbidden")
    body = body_of(problem.to_response())
    assert secret not in json.dumps(body)
    assert body["detail"] == "field access_token holds [redacted] which is forbidden"


def test_detail_keeps_ordinary_words_and_pointers() -> None:
    text = "field /events/0/client_id must be a string of at most 255 characters"
    assert Problem("bad-event", text).detail == text
    long_word = "a" * 40  # no digit: not token-like
    assert Problem("bad-event", long_word).detail == long_word


def test_detail_is_one_capped_line() -> None:
    problem = Problem("bad-event", "line one\nline two\x00" + "word " * 500)
    assert problem.detail is not None
    assert "\n" not in problem.detail
    assert "\x00" not in problem.detail
    assert len(problem.detail) == 500
    assert problem.detail.endswith("…")


SMALL_ENTRIES = Limits(max_entry_bytes=100)

CODEC_INPUTS: list[tuple[str, Callable[[], object]]] = [
    ("bad-json", lambda: decode_json(b"{")),
    ("bad-cbor", lambda: decode_cbor(b"\xa1")),
    ("bad-cbor", lambda: decode_deterministic(bytes.fromhex("1800"))),
    ("bad-event", lambda: decode_json(b"[]")),
    ("float-not-allowed", lambda: decode_json(b'{"a": 1.5}')),
    ("unsupported-type", lambda: decode_cbor(bytes.fromhex("a16161c000"))),
    ("duplicate-key", lambda: decode_json(b'{"a": 1, "a": 1}')),
    ("too-deep", lambda: decode_json(b"[" * 100)),
    ("payload-too-large", lambda: decode_json(b" " * 70_000)),
    ("entry-too-large", lambda: decode_json(b'{"a": "' + b"x" * 200 + b'"}', SMALL_ENTRIES)),
]


@pytest.mark.parametrize(("slug", "call"), CODEC_INPUTS)
def test_codec_errors_map_to_problems(slug: str, call: Callable[[], object]) -> None:
    with pytest.raises(CodecError) as info:
        call()
    problem = problem_from_codec_error(info.value)
    assert problem.slug == slug
    assert problem.status == PROBLEM_TYPES[slug].status
    assert problem.detail == info.value.detail


def test_codec_entry_too_large_maps_to_413() -> None:
    error = CodecError("entry-too-large", "the encoded event is 70000 bytes", "")
    problem = problem_from_codec_error(error)
    assert (problem.slug, problem.status) == ("entry-too-large", 413)
    assert body_of(problem.to_response())["pointer"] == ""


def test_codec_pointer_becomes_an_extension_member() -> None:
    with pytest.raises(CodecError) as info:
        decode_json(b'{"scope": ["a", 2.5]}')
    body = body_of(problem_from_codec_error(info.value).to_response())
    assert body["pointer"] == "/scope/1"
    assert body["status"] == 422
    no_pointer = problem_from_codec_error(CodecError("bad-json", "Expecting value"))
    assert "pointer" not in no_pointer.to_dict()
    unknown = problem_from_codec_error(CodecError("something-new", "x"))
    assert unknown.slug == "bad-event"


@pytest.mark.parametrize(
    ("status", "slug"),
    [(404, "not-found"), (405, "method-not-allowed"), (415, "unsupported-media-type"),
     (418, "bad-parameter"), (500, "internal"), (502, "internal"), (503, "unavailable")],
)
def test_http_exceptions_map_to_problems(status: int, slug: str) -> None:
    problem = problem_from_http_exception(HTTPException(status, headers={"Allow": "GET"}))
    assert problem.slug == slug
    assert problem.headers["Allow"] == "GET"
    if slug == "internal":
        assert problem.detail is None


SECRET_MESSAGE = "database password is hunter2-Zx8Qp4Lm9Rt2Vb7Nc3Kd6"


def make_app() -> Starlette:
    async def problem(request: Request) -> Response:
        raise Problem("index-out-of-range", "index 9 is not below tree size 3")

    async def codec(request: Request) -> Response:
        decode_json(await request.body())
        return Response("accepted")

    async def crash(request: Request) -> Response:
        raise RuntimeError(SECRET_MESSAGE)

    routes = [
        Route("/problem", problem),
        Route("/codec", codec, methods=["POST"]),
        Route("/crash", crash),
    ]
    return Starlette(routes=routes, exception_handlers=exception_handlers())


async def exercise_app() -> dict[str, httpx.Response]:
    """Send one request per error path to the app in process; return the answers by name."""
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return {
            "problem": await client.get("/problem"),
            "codec": await client.post("/codec", content=b'{"iat": 1e3}'),
            "accepted": await client.post("/codec", content=b'{"iat": 1}'),
            "missing": await client.get("/nowhere"),
            "method": await client.post("/problem"),
            "crash": await client.get("/crash"),
        }


def test_handlers_answer_every_error_with_a_problem(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="server.problems"):
        answers = asyncio.run(exercise_app())

    answer = answers["problem"]
    assert answer.status_code == 400
    assert answer.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert answer.json()["type"] == "urn:etch:error:index-out-of-range"

    answer = answers["codec"]
    assert answer.status_code == 422
    assert answer.json()["pointer"] == "/iat"
    assert answers["accepted"].text == "accepted"

    answer = answers["missing"]
    assert (answer.status_code, answer.json()["type"]) == (404, "urn:etch:error:not-found")

    answer = answers["method"]
    assert answer.status_code == 405
    assert answer.json()["type"] == "urn:etch:error:method-not-allowed"
    assert "GET" in answer.headers["allow"]

    answer = answers["crash"]
    assert answer.status_code == 500
    assert answer.json() == {
        "type": "urn:etch:error:internal",
        "title": "Internal error",
        "status": 500,
    }
    assert "hunter2" not in answer.text
    records = [r for r in caplog.records if r.name == "server.problems"]
    assert records
    assert all("hunter2" not in r.getMessage() for r in records)
    assert "RuntimeError" in records[0].getMessage()
