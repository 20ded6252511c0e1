"""The fast path of ``GET /v1/lookup?token_ref=...``: same answers as the general path (before
routing and, under a mount, on the route), kept answers dropped when the tree grows, refusals
unchanged, readers still get entry contents, and only the newest answers are kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from client.tokens import token_ref
from server import ingest
from server.ingest import create_oauth_app
from tests.oauth_support import OAuthLog, open_oauth_log, sample_event

pytestmark = pytest.mark.anyio


@pytest.fixture
async def slog(tmp_path: Path) -> AsyncIterator[OAuthLog]:
    async with open_oauth_log(str(tmp_path / "log.db")) as opened:
        yield opened


async def both(log: OAuthLog, ref: str) -> tuple[bytes, bytes]:
    """The fast answer and the general one (an explicit limit takes the general path)."""
    fast = await log.client.get(f"/v1/lookup?token_ref={ref}")
    general = await log.client.get(f"/v1/lookup?token_ref={ref}&limit=100")
    assert fast.status_code == general.status_code
    assert fast.headers["content-type"] == general.headers["content-type"]
    assert fast.headers["cache-control"] == general.headers["cache-control"]
    assert fast.headers.multi_items() == general.headers.multi_items()
    return fast.content, general.content


async def test_fast_answers_equal_the_general_ones_and_follow_the_tree(slog: OAuthLog) -> None:
    submitter = await slog.add_submitter("as-prod")
    refs = [token_ref(b"token-%d" % i) for i in range(3)]
    for n in range(5):
        event = sample_event("token-issued", token_ref=refs[n % 3])
        assert (await slog.submit(submitter, event)).status_code == 201
    for ref in [*refs, token_ref(b"never-logged")]:
        fast, general = await both(slog, ref)
        assert fast == general
        assert (await both(slog, ref))[0] == fast  # kept: the same bytes again
    before = (await slog.client.get(f"/v1/lookup?token_ref={refs[0]}")).json()
    assert len(before["results"]) == 2
    assert before["next"] is None
    await slog.submit(submitter, sample_event("token-revoked", token_ref=refs[0]))
    after = (await slog.client.get(f"/v1/lookup?token_ref={refs[0]}")).json()
    assert len(after["results"]) == 3  # the kept answer was dropped when the tree grew
    fast, general = await both(slog, refs[0])
    assert fast == general


async def test_refusals_and_readers_take_the_general_path(slog: OAuthLog) -> None:
    submitter = await slog.add_submitter("as-prod")
    ref = token_ref(b"token")
    await slog.submit(submitter, sample_event("token-issued", token_ref=ref))
    # 43 characters in the raw query (the fast path), and encoded (the general path).
    for bad in ("!" * 43, ref[:-1] + "B", ref[:-1] + "é"):
        response = await slog.client.get(f"/v1/lookup?token_ref={bad}")
        assert response.status_code == 400
        assert response.json()["type"] == "urn:etch:error:bad-parameter"
        response = await slog.client.get("/v1/lookup", params={"token_ref": bad})
        assert response.status_code == 400
        assert response.json()["type"] == "urn:etch:error:bad-parameter"
    reader = await slog.add_reader("auditor")
    answer = await slog.client.get(
        f"/v1/lookup?token_ref={ref}", headers={"authorization": f"Bearer {reader}"}
    )
    (result,) = answer.json()["results"]
    assert result["event"]["event"]["token_ref"] == ref
    assert "entry" in result
    unknown = await slog.client.get(
        f"/v1/lookup?token_ref={ref}", headers={"authorization": "Bearer nope"}
    )
    assert unknown.status_code == 401


async def test_openapi_lists_the_signed_batch_route(slog: OAuthLog) -> None:
    document = (await slog.client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/events/signed-batch"]["post"]
    assert operation["security"] == [{"bearer": []}]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["size", "root", "signature", "events"]


async def test_a_mounted_log_answers_the_same_on_its_route(slog: OAuthLog) -> None:
    # Under a mount (a root path) the lookup is answered by the route, not before routing.
    submitter = await slog.add_submitter("as-prod")
    ref = token_ref(b"token")
    await slog.submit(submitter, sample_event("token-issued", token_ref=ref))
    inner = create_oauth_app(slog.service, slog.storage, manage_service=False)
    outer = Starlette(routes=[Mount("/logs/a", app=inner)])
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://log.test") as client:
        mounted = await client.get(f"/logs/a/v1/lookup?token_ref={ref}")
        bad = await client.get(f"/logs/a/v1/lookup?token_ref={'!' * 43}")
    direct = await slog.client.get(f"/v1/lookup?token_ref={ref}")
    assert mounted.status_code == 200
    assert mounted.content == direct.content
    assert mounted.headers.multi_items() == direct.headers.multi_items()
    assert len(mounted.json()["results"]) == 1
    assert bad.status_code == 400


async def test_at_most_the_newest_answers_are_kept(
    slog: OAuthLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "REF_ANSWERS_MAX", 3)
    submitter = await slog.add_submitter("as-prod")
    refs = [token_ref(b"token-%d" % i) for i in range(5)]
    for ref in refs:
        await slog.submit(submitter, sample_event("token-issued", token_ref=ref))
    inner = create_oauth_app(slog.service, slog.storage, manage_service=False)
    layer: ingest.OAuthLayer = inner.state.oauth
    transport = httpx.ASGITransport(app=inner)
    async with httpx.AsyncClient(transport=transport, base_url="http://log.test") as client:
        answers = [await client.get(f"/v1/lookup?token_ref={ref}") for ref in refs]
        assert [len(a.json()["results"]) for a in answers] == [1] * 5
        kept = [b"token_ref=" + ref.encode() for ref in refs[2:]]
        assert list(layer._ref_answers) == kept
        assert list(layer._ref_answers.values()) == [a.content for a in answers[2:]]
        again = await client.get(f"/v1/lookup?token_ref={refs[0]}")
        assert again.content == answers[0].content
        assert list(layer._ref_answers) == [*kept[1:], b"token_ref=" + refs[0].encode()]
