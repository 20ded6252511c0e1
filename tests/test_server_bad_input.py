"""Bad input to the log's HTTP API: each refusal is its own 4xx problem, nothing is stored.

Every case of :data:`CASES` runs against one log per backend (SQLite, PostgreSQL) that holds a
few entries. For each: the answer is the expected RFC 9457 problem type and status with
``application/problem+json``; the checkpoint served, the stored state and the tree size are the
same before and after; and the log still answers ``/healthz``. At the end a good submission
still works. Limits are raised (bodies up to 200,000 bytes) so that entries over 65,535 bytes
once encoded reach the encoder.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import cbor2
import pytest

from server.codec import Limits
from tests.server_helpers import (
    BACKENDS,
    InProcessLog,
    b64d,
    check_problem,
    check_submit_result,
    database,
    entry_bytes,
    open_log,
)

pytestmark = pytest.mark.anyio

LIMITS = Limits(
    max_body_bytes=200_000,
    max_string_bytes=150_000,
    max_batch_bytes=400_000,
    max_batch_events=50,
    max_depth=16,
)
JSON = {"content-type": "application/json"}
CBOR = {"content-type": "application/cbor"}
SIZE = 4
"""Entries in the log while the cases run (indexes 0..3)."""

BAD_NUMBERS = {
    "negative": "-1",
    "plus": "+1",
    "leading-zero": "01",
    "space": " 1",
    "trailing-space": "1 ",
    "underscore": "1_0",
    "arabic-indic": "\u0661",
    "fullwidth": "\uff11",
    "hex": "0x1",
    "exponent": "1e1",
    "empty": "",
    "overflow": str(2**63),
    "huge": "9" * 400,
}


@dataclass(frozen=True, slots=True)
class Case:
    """One request and the problem it must get."""

    id: str
    method: str
    path: str
    slug: str
    status: int
    params: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False


def _cases() -> Iterator[Case]:
    # -- indexes and sizes in queries and paths -------------------------------------------------
    for name, bad in BAD_NUMBERS.items():
        yield Case(
            f"inclusion-index-{name}",
            "GET",
            "/v1/proof/inclusion",
            "bad-parameter",
            400,
            params={"index": bad, "tree_size": "2"},
        )
        yield Case(
            f"inclusion-size-{name}",
            "GET",
            "/v1/proof/inclusion",
            "bad-parameter",
            400,
            params={"index": "0", "tree_size": bad},
        )
        yield Case(
            f"consistency-first-{name}",
            "GET",
            "/v1/proof/consistency",
            "bad-parameter",
            400,
            params={"first": bad, "second": "2"},
        )
        yield Case(
            f"consistency-second-{name}",
            "GET",
            "/v1/proof/consistency",
            "bad-parameter",
            400,
            params={"first": "1", "second": bad},
        )
        if bad.strip() and "/" not in bad:
            yield Case(f"entry-{name}", "GET", f"/v1/entries/{bad}", "bad-parameter", 400)
            yield Case(f"receipt-{name}", "GET", f"/v1/receipt/{bad}", "bad-parameter", 400)
    yield Case(
        "inclusion-index-missing",
        "GET",
        "/v1/proof/inclusion",
        "bad-parameter",
        400,
        params={"tree_size": "2"},
    )
    yield Case(
        "inclusion-index-at-size",
        "GET",
        "/v1/proof/inclusion",
        "index-out-of-range",
        400,
        params={"index": "2", "tree_size": "2"},
    )
    yield Case(
        "inclusion-index-beyond-log",
        "GET",
        "/v1/proof/inclusion",
        "index-out-of-range",
        400,
        params={"index": str(SIZE)},
    )
    yield Case(
        "inclusion-size-zero",
        "GET",
        "/v1/proof/inclusion",
        "index-out-of-range",
        400,
        params={"index": "0", "tree_size": "0"},
    )
    yield Case(
        "inclusion-size-beyond-log",
        "GET",
        "/v1/proof/inclusion",
        "tree-size-unknown",
        400,
        params={"index": "0", "tree_size": str(SIZE + 1)},
    )
    yield Case(
        "inclusion-size-max",
        "GET",
        "/v1/proof/inclusion",
        "tree-size-unknown",
        400,
        params={"index": "0", "tree_size": str(2**63 - 1)},
    )
    yield Case(
        "inclusion-index-and-hash",
        "GET",
        "/v1/proof/inclusion",
        "bad-parameter",
        400,
        params={"index": "0", "leaf_hash": "00" * 32},
    )
    for name, bad in {
        "upper": "AB" * 32,
        "short": "ab" * 31,
        "long": "ab" * 33,
        "not-hex": "zz" * 32,
        "empty": "",
    }.items():
        yield Case(
            f"inclusion-leaf-hash-{name}",
            "GET",
            "/v1/proof/inclusion",
            "bad-parameter",
            400,
            params={"leaf_hash": bad},
        )
    yield Case(
        "consistency-first-above-second",
        "GET",
        "/v1/proof/consistency",
        "consistency-range",
        400,
        params={"first": "3", "second": "2"},
    )
    yield Case(
        "consistency-second-beyond-log",
        "GET",
        "/v1/proof/consistency",
        "tree-size-unknown",
        400,
        params={"first": "1", "second": str(SIZE + 1)},
    )
    yield Case(
        "consistency-missing",
        "GET",
        "/v1/proof/consistency",
        "bad-parameter",
        400,
        params={"first": "1"},
    )
    yield Case("entry-beyond-log", "GET", f"/v1/entries/{SIZE}", "not-found", 404)
    yield Case("entry-max", "GET", f"/v1/entries/{2**63 - 1}", "not-found", 404)
    yield Case("receipt-beyond-log", "GET", f"/v1/receipt/{SIZE}", "not-found", 404)
    for path in (
        "tile/0/1",
        "tile/0/0000",
        "tile/00/000",
        "tile/+0/000",
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/01",
        "tile/0/x000/000",
        "tile/0/x001",
        "tile/-1/000",
        "tile/entries/000.p/+1",
        "tile/0/\u0660\u0660\u0660",
        "tile/0/000/",
        "tile/64/000",
    ):
        yield Case(f"tile-path-{path}", "GET", "/" + path, "not-found", 404)
    yield Case("tile-beyond-log", "GET", "/tile/0/000.p/5", "not-found", 404)
    yield Case("bundle-beyond-log", "GET", "/tile/entries/000.p/5", "not-found", 404)
    yield Case("unknown-route", "GET", "/v2/events", "not-found", 404)
    yield Case("wrong-method", "GET", "/v1/events", "method-not-allowed", 405)

    # -- bodies: limits, content types --------------------------------------------------------
    big = json.dumps({"a": "x" * LIMITS.max_body_bytes}).encode()
    yield Case(
        "body-over-limit", "POST", "/v1/events", "payload-too-large", 413, content=big, headers=JSON
    )
    yield Case(
        "body-over-limit-chunked",
        "POST",
        "/v1/events",
        "payload-too-large",
        413,
        content=big,
        headers=JSON,
        chunked=True,
    )
    yield Case(
        "body-over-limit-cbor",
        "POST",
        "/v1/events",
        "payload-too-large",
        413,
        content=cbor2.dumps({"a": b"x" * LIMITS.max_body_bytes}),
        headers=CBOR,
    )
    batch = json.dumps([{"a": "x" * 100_000}] * 5).encode()
    yield Case(
        "batch-over-limit",
        "POST",
        "/v1/events/batch",
        "payload-too-large",
        413,
        content=batch,
        headers=JSON,
    )
    yield Case(
        "batch-over-limit-chunked",
        "POST",
        "/v1/events/batch",
        "payload-too-large",
        413,
        content=batch,
        headers=JSON,
        chunked=True,
    )
    yield Case(
        "batch-too-many-events",
        "POST",
        "/v1/events/batch",
        "payload-too-large",
        413,
        content=json.dumps([{"n": i} for i in range(51)]).encode(),
        headers=JSON,
    )
    for name, content_type in {
        "text": "text/plain",
        "form": "application/x-www-form-urlencoded",
        "json-seq": "application/json-seq",
        "cbor-seq": "application/cbor-seq",
        "octets": "application/octet-stream",
        "empty": "",
    }.items():
        for path in ("/v1/events", "/v1/events/batch"):
            yield Case(
                f"content-type-{name}{path}",
                "POST",
                path,
                "unsupported-media-type",
                415,
                content=b'{"a": 1}',
                headers={"content-type": content_type},
            )

    # -- malformed JSON ----------------------------------------------------------------------------
    json_cases: dict[str, tuple[bytes, str, int]] = {
        "empty": (b"", "bad-json", 400),
        "truncated": (b'{"a": 1', "bad-json", 400),
        "trailing": (b'{"a": 1} x', "bad-json", 400),
        "two-documents": (b'{"a": 1}{"b": 2}', "bad-json", 400),
        "invalid-utf8": (b'{"a": "\xff"}', "bad-json", 400),
        "lone-surrogate": (b'{"a": "\\ud800"}', "bad-json", 400),
        "single-quotes": (b"{'a': 1}", "bad-json", 400),
        "array": (b"[1, 2]", "bad-event", 422),
        "string": (b'"event"', "bad-event", 422),
        "null": (b"null", "bad-event", 422),
        "float": (b'{"a": 1.5}', "float-not-allowed", 422),
        "float-integral": (b'{"a": 1.0}', "float-not-allowed", 422),
        "exponent": (b'{"a": 1e3}', "float-not-allowed", 422),
        "nan": (b'{"a": NaN}', "float-not-allowed", 422),
        "infinity": (b'{"a": [-Infinity]}', "float-not-allowed", 422),
        "duplicate-key": (b'{"a": 1, "a": 2}', "duplicate-key", 422),
        "nested-duplicate-key": (b'{"a": {"b": 1, "b": 1}}', "duplicate-key", 422),
        "deep": (b'{"a": ' * 40 + b"1" + b"}" * 40, "too-deep", 422),
        "deep-arrays": (b'{"a": ' + b"[" * 90_000 + b"]" * 90_000 + b"}", "too-deep", 422),
        "deep-unclosed": (b"[" * 190_000, "too-deep", 422),
        "int-too-big": (b'{"a": 18446744073709551616}', "unsupported-type", 422),
        "int-too-small": (b'{"a": -9223372036854775809}', "unsupported-type", 422),
        "int-huge": (b'{"a": ' + b"9" * 5000 + b"}", "unsupported-type", 422),
    }
    for name, (body, slug, status) in json_cases.items():
        yield Case(f"json-{name}", "POST", "/v1/events", slug, status, content=body, headers=JSON)
    for name in ("empty", "truncated", "invalid-utf8", "deep-unclosed"):
        body, slug, status = json_cases[name]
        yield Case(
            f"json-batch-{name}",
            "POST",
            "/v1/events/batch",
            slug,
            status,
            content=body,
            headers=JSON,
        )
    yield Case(
        "json-batch-not-array",
        "POST",
        "/v1/events/batch",
        "bad-event",
        422,
        content=b'{"a": 1}',
        headers=JSON,
    )

    # -- malformed CBOR ----------------------------------------------------------------------------
    huge = (2**62).to_bytes(8, "big")
    cbor_cases: dict[str, tuple[bytes, str, int]] = {
        "empty": (b"", "bad-cbor", 400),
        "truncated-map": (b"\xa1\x61a", "bad-cbor", 400),
        "truncated-head": (b"\xa1\x61a\x19\x01", "bad-cbor", 400),
        "trailing": (b"\xa1\x61a\x01\x00", "bad-cbor", 400),
        "indefinite-map": (b"\xbf\x61a\x01\xff", "bad-cbor", 400),
        "indefinite-text": (b"\xa1\x61a\x7f\x61b\xff", "bad-cbor", 400),
        "reserved-info": (b"\xa1\x61a\x1c", "bad-cbor", 400),
        "invalid-utf8": (b"\xa1\x61a\x61\xff", "bad-cbor", 400),
        # Declared lengths beyond the data are refused from the head, before any allocation.
        "huge-map": (b"\xbb" + huge, "bad-cbor", 400),
        "huge-array": (b"\xa1\x61a\x9b" + huge, "bad-cbor", 400),
        "huge-text": (b"\xa1\x61a\x7b" + huge + b"x", "bad-cbor", 400),
        "huge-bytes": (b"\xa1\x61a\x5b" + huge, "bad-cbor", 400),
        # Declared lengths within the data but over a limit are refused as too large.
        "array-over-item-limit": (b"\xa1\x61a\x99\x03\xe9" + bytes(1001), "payload-too-large", 413),
        "map-over-item-limit": (
            b"\xb9\x03\xe9" + b"".join(cbor2.dumps(f"k{i}") + b"\x00" for i in range(1001)),
            "payload-too-large",
            413,
        ),
        "not-a-map": (b"\x82\x01\x02", "bad-event", 422),
        "integer": (b"\x01", "bad-event", 422),
        "tag": (b"\xa1\x61a\xc1\x1a\x65\x00\x00\x00", "unsupported-type", 422),
        "bignum-tag": (b"\xa1\x61a\xc2\x49\x01" + bytes(8), "unsupported-type", 422),
        "undefined": (b"\xa1\x61a\xf7", "unsupported-type", 422),
        "simple-value": (b"\xa1\x61a\xe0", "unsupported-type", 422),
        "simple-value-ext": (b"\xa1\x61a\xf8\x20", "unsupported-type", 422),
        "integer-key": (b"\xa1\x01\x01", "unsupported-type", 422),
        "half-float": (b"\xa1\x61a\xf9\x3c\x00", "float-not-allowed", 422),
        "single-float": (b"\xa1\x61a\xfa\x3f\x80\x00\x00", "float-not-allowed", 422),
        "double-float": (b"\xa1\x61a" + cbor2.dumps(1.5), "float-not-allowed", 422),
        "nan": (b"\xa1\x61a\xf9\x7e\x00", "float-not-allowed", 422),
        "duplicate-key": (b"\xa2\x61a\x01\x61a\x02", "duplicate-key", 422),
        "duplicate-key-long-form": (b"\xa2\x61a\x01\x78\x01a\x02", "duplicate-key", 422),
        "deep": (b"\xa1\x61a" + b"\x81" * 100 + b"\x00", "too-deep", 422),
        "deep-maps": (b"\xa1\x61a" * 200 + b"\x00", "too-deep", 422),
        "negative-too-small": (
            b"\xa1\x61a\x3b" + (2**63).to_bytes(8, "big"),
            "unsupported-type",
            422,
        ),
    }
    for name, (body, slug, status) in cbor_cases.items():
        yield Case(f"cbor-{name}", "POST", "/v1/events", slug, status, content=body, headers=CBOR)
    for name, body in {
        "empty": b"",
        "truncated": b"\x82\xa0",
        "indefinite": b"\x9f\xa0\xff",
        "trailing": b"\x81\xa0\x00",
    }.items():
        yield Case(
            f"cbor-batch-{name}",
            "POST",
            "/v1/events/batch",
            "bad-cbor",
            400,
            content=body,
            headers=CBOR,
        )
    yield Case(
        "cbor-batch-huge-array",
        "POST",
        "/v1/events/batch",
        "payload-too-large",
        413,
        content=b"\x9b" + huge,
        headers=CBOR,
    )
    yield Case(
        "cbor-batch-too-many-events",
        "POST",
        "/v1/events/batch",
        "payload-too-large",
        413,
        content=b"\x98\x33" + b"\xa0" * 51,
        headers=CBOR,
    )
    yield Case(
        "cbor-batch-not-array",
        "POST",
        "/v1/events/batch",
        "bad-event",
        422,
        content=b"\xa1\x61a\x01",
        headers=CBOR,
    )

    # -- entries over 65,535 bytes once encoded -----------------------------------------------
    # {"a": text of n bytes} encodes to 1 + 2 + 3 + n bytes for 256 <= n < 65536.
    yield Case(
        "entry-too-large-json",
        "POST",
        "/v1/events",
        "entry-too-large",
        413,
        content=json.dumps({"a": "x" * 65_530}).encode(),
        headers=JSON,
    )
    yield Case(
        "entry-too-large-cbor",
        "POST",
        "/v1/events",
        "entry-too-large",
        413,
        content=cbor2.dumps({"a": b"x" * 65_530}),
        headers=CBOR,
    )
    yield Case(
        "entry-too-large-many-fields",
        "POST",
        "/v1/events",
        "entry-too-large",
        413,
        content=json.dumps({f"k{i}": "y" * 1000 for i in range(70)}).encode(),
        headers=JSON,
    )


CASES = list(_cases())


@pytest.fixture(scope="module", params=BACKENDS)
async def log(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InProcessLog]:
    async with (
        database(request.param, request, tmp_path_factory.mktemp("bad")) as url,
        open_log(url, limits=LIMITS) as opened,
    ):
        for n in range(SIZE):
            await opened.submit_ok({"n": n})
        yield opened


async def _send(log: InProcessLog, case: Case) -> Any:
    if case.chunked:
        assert case.content is not None
        data = case.content

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 16_384):
                yield data[start : start + 16_384]

        return await log.client.request(
            case.method, case.path, content=chunks(), headers=case.headers
        )
    return await log.client.request(
        case.method, case.path, params=case.params, content=case.content, headers=case.headers
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_input_is_refused_and_nothing_is_stored(log: InProcessLog, case: Case) -> None:
    before = await log.state()
    response = await _send(log, case)
    if case.chunked:
        assert "content-length" not in response.request.headers
    body = check_problem(response, case.slug, case.status)
    if case.slug == "unsupported-media-type":
        assert "application/cbor" in response.headers["accept-post"]
    if case.slug == "method-not-allowed":
        assert "POST" in response.headers["allow"]
    assert "detail" not in body or "x" * 100 not in body["detail"]
    assert await log.state() == before
    assert (await log.client.get("/healthz")).status_code == 200


async def test_largest_entry_is_accepted(log: InProcessLog) -> None:
    """The boundary of the entry-too-large cases: 65,535 bytes encoded is fine."""
    event = {"a": "z" * 65_529}
    assert len(entry_bytes(event)) == 65_535
    result = await log.submit_ok(event)
    assert result["duplicate"] is False
    stored = (await log.client.get(f"/v1/entries/{result['index']}")).json()
    assert b64d(stored["entry"]) == entry_bytes(event)
    bundle = await log.client.get("/tile/entries/000.p/" + str(result["index"] + 1))
    assert bundle.status_code == 200


async def test_batch_with_good_and_bad_items(log: InProcessLog) -> None:
    """Good items are logged, each bad one gets its problem in place; request order is kept."""
    start = (await log.state())[0]
    body = (
        b'[{"g": 1}, {"f": 1.5}, {"g": 2}, {"d": 1, "d": 2}, 7, {"g": 1}, '
        + b'{"neg": -9223372036854775809}, '
        + b'{"big": "'
        + b"q" * 65_530
        + b'"}, {"g": 3}, {"i": 18446744073709551616}]'
    )
    response = await log.client.post("/v1/events/batch", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = [
        None,
        "float-not-allowed",
        None,
        "duplicate-key",
        "bad-event",
        None,
        "unsupported-type",
        "entry-too-large",
        None,
        "unsupported-type",
    ]
    assert len(results) == len(expected)
    good = {0: {"g": 1}, 2: {"g": 2}, 5: {"g": 1}, 8: {"g": 3}}
    for position, (result, slug) in enumerate(zip(results, expected, strict=True)):
        if slug is None:
            check_submit_result(result, entry_bytes(good[position]), log.verifier, vkey=log.vkey)
        else:
            assert result["type"] == f"urn:etch:error:{slug}", (position, result)
            assert "index" not in result
    assert [results[i]["index"] for i in (0, 2, 5, 8)] == [start, start + 1, start, start + 2]
    assert results[5]["duplicate"] is True
    assert (await log.state())[0] == start + 3


async def test_cbor_batch_with_good_and_bad_items(log: InProcessLog) -> None:
    start = (await log.state())[0]
    items = [
        cbor2.dumps({"c": 1}),
        b"\xa1\x61a\xf9\x3c\x00",
        b"\xa1\x61a\xc1\x01",
        cbor2.dumps({"c": 2}),
        b"\xa2\x61a\x01\x61a\x02",
        b"\xa1\x61a" + b"\x81" * 30 + b"\x00",
        b"\x05",
        b"\xa1\x61a\x61\xff",
    ]
    body = bytes([0x80 | len(items)]) + b"".join(items)
    response = await log.client.post("/v1/events/batch", content=body, headers=CBOR)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r.get("index") for r in results] == [start, None, None, start + 1] + [None] * 4
    assert [r.get("type", "").rpartition(":")[2] for r in results] == [
        "",
        "float-not-allowed",
        "unsupported-type",
        "",
        "duplicate-key",
        "too-deep",
        "bad-event",
        "bad-cbor",
    ]
    assert (await log.state())[0] == start + 2


async def test_empty_batch_changes_nothing(log: InProcessLog) -> None:
    before = await log.state()
    response = await log.client.post("/v1/events/batch", content=b"[]", headers=JSON)
    assert response.status_code == 200
    assert response.json() == {"results": []}
    assert await log.state() == before


async def test_still_serving_after_the_table(log: InProcessLog) -> None:
    result = await log.submit_ok({"after": "bad input"})
    assert result["duplicate"] is False
    _, checkpoint = await log.checkpoint()
    assert checkpoint.tree_size == result["index"] + 1


def test_the_table_itself() -> None:
    """Case ids are unique (pytest would silently rename repeats) and every status is 4xx."""
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(400 <= c.status < 500 for c in CASES)
