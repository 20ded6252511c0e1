"""The log's explorer pages, in process: content, escaping of hostile values, no secrets, and
who may read what (public and private logs, readers signed in, revoked, token lookups off)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from client.tokens import token_ref
from server.explorer.access import COOKIE_NAME
from server.ingest import OAuthSettings
from tests.explorer_support import ExplorerLog, open_explorer_log, text_of
from tests.oauth_support import REF_A, sample_event

pytestmark = pytest.mark.anyio

HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


async def _filled(log: ExplorerLog, count: int = 4) -> str:
    """Register a submitter, log ``count`` events in their own batches, cosign; return the
    submitter's credential."""
    submitter = await log.oauth.add_submitter("as-1")
    for _ in range(count):
        log.oauth.clock.seconds += 60
        response = await log.oauth.submit(submitter, sample_event("token-revoked"))
        assert response.status_code == 201, response.text
    await log.cosign(("w1", "w3"))
    return submitter.credential


def _secrets_absent(log: ExplorerLog, html: str, *extra: str) -> None:
    assert log.service.signer.private_key not in html
    for secret in extra:
        assert secret not in html


async def test_overview_shows_checkpoint_witnesses_quorum_growth_and_activity(
    tmp_path: Path,
) -> None:
    async with open_explorer_log(tmp_path) as log:
        credential = await _filled(log)
        published = log.service.published
        assert published is not None
        response = await log.client.get("/explorer")
        assert response.status_code == 200
        html = response.text
        text = text_of(html)
        cp = published.checkpoint
        assert f'id="tree-size">{cp.tree_size}<' in html
        assert cp.root_hash.hex() in html
        assert cp.origin in text
        assert "2026-01-01 00:04:00 UTC" in text  # log time of the newest entry
        assert "✓ Quorum met" in text
        assert text.count("✓ cosigned") == 2  # w1 and w3, with their cosignature times
        assert "2026-01-01 00:00:05 UTC" in text
        assert "<polyline" in html
        assert "4 new entries since the server started" in text
        assert "mean of 4 submissions" in text
        _secrets_absent(log, html, credential)
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert "<script src=" in html
        assert "<script>" not in html
        redirect = await log.client.get("/")
        assert (redirect.status_code, redirect.headers["location"]) == (307, "/explorer")


async def test_overview_says_when_the_quorum_is_not_met(tmp_path: Path) -> None:
    async with open_explorer_log(tmp_path) as log:
        await _filled(log, 1)
        await log.cosign(("w2",))
        text = text_of((await log.client.get("/explorer")).text)
        assert "✗ Quorum not met" in text
        assert text.count("✓ cosigned") == 1


async def test_hostile_values_are_escaped_everywhere(tmp_path: Path) -> None:
    async with open_explorer_log(tmp_path, OAuthSettings(public_entries=True)) as log:
        submitter = await log.oauth.add_submitter("as-1")
        for event in (
            sample_event("session-revoked", reason=HOSTILE),
            sample_event("token-revoked", client_id="c<b>1"),
        ):
            response = await log.oauth.submit(submitter, event)
            assert response.status_code == 201, response.text
        await log.cosign()
        pages = [
            "/explorer/entry/0",
            "/explorer/lookup?kind=client_id&value=c%3Cb%3E1",
            "/explorer/lookup?kind=type&value=" + httpx.QueryParams({"v": HOSTILE})["v"],
            "/explorer/signin?next=" + httpx.QueryParams({"n": HOSTILE})["n"],
            "/explorer/consistency?first=" + HOSTILE,
            "/explorer/token?token_ref=" + HOSTILE,
        ]
        for path in pages:
            response = await log.client.get(path)
            assert response.status_code in (200, 400), path
            assert "<script>alert" not in response.text, path
            assert "<img src=x" not in response.text, path
            assert "<b>1" not in response.text, path
        entry = (await log.client.get("/explorer/entry/0")).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in entry
        lookup = (await log.client.get("/explorer/lookup?kind=client_id&value=c%3Cb%3E1")).text
        assert 'value="c&lt;b&gt;1"' in lookup
        assert 'href="/explorer/entry/1"' in lookup


async def test_entry_page_draws_and_checks_the_proof(tmp_path: Path) -> None:
    async with open_explorer_log(tmp_path, OAuthSettings(public_entries=True)) as log:
        await _filled(log, 5)
        html = (await log.client.get("/explorer/entry/3")).text
        assert 'id="server-check"' in html
        assert "✓ Checked by the server" in html
        assert 'class="node root ok"' in html
        assert html.count('class="node sibling"') == 3  # size 5, index 3
        assert 'href="/v1/receipt/3" download="3.tlog-proof"' in html
        assert "token-revoked" in html
        assert (await log.client.get("/explorer/entry?index=3")).headers["location"] == (
            "/explorer/entry/3"
        )
        for path, status in (
            ("/explorer/entry/5", 404),
            ("/explorer/entry/03", 400),
            ("/explorer/entry/-1", 400),
            ("/explorer/entry?index=+3", 400),
        ):
            assert (await log.client.get(path)).status_code == status, path


async def test_entry_not_yet_cosigned(tmp_path: Path) -> None:
    async with open_explorer_log(tmp_path, OAuthSettings(public_entries=True)) as log:
        await _filled(log, 2)
        submitter = log.oauth.submitters["as-1"]
        assert (await log.oauth.submit(submitter, sample_event("token-revoked"))).status_code == 201
        html = (await log.client.get("/explorer/entry/2")).text
        assert "not yet covered by a published checkpoint" in html
        overview = text_of((await log.client.get("/explorer")).text)
        assert "1 newer entries are sequenced" in overview


async def test_consistency_page(tmp_path: Path) -> None:
    async with open_explorer_log(tmp_path) as log:
        await _filled(log, 6)
        html = (await log.client.get("/explorer/consistency?first=2&second=6")).text
        assert "✓ Checked by the server" in html
        assert html.count('<g class="range') == 2  # PROOF(2, D[6]): leaves 2–3, leaves 4–5
        assert "(signed checkpoint)" in html
        default = (await log.client.get("/explorer/consistency")).text
        assert "From 3 to 6 leaves" in default
        for query, status in (("first=5&second=4", 400), ("second=7", 404), ("first=01", 400)):
            response = await log.client.get("/explorer/consistency?" + query)
            assert response.status_code == status, query


async def test_private_log_shows_nothing_private_to_anonymous_visitors(tmp_path: Path) -> None:
    async with open_explorer_log(tmp_path) as log:
        submitter = await log.oauth.add_submitter("as-1")
        event = sample_event("token-revoked", client_id="secret-client-7", token_ref=REF_A)
        assert (await log.oauth.submit(submitter, event)).status_code == 201
        await log.cosign()
        entry = await log.client.get("/explorer/entry/0")
        assert entry.status_code == 200
        assert "secret-client-7" not in entry.text
        assert "shown to readers only" in entry.text
        denied = await log.client.get("/explorer/lookup?kind=client_id&value=secret-client-7")
        assert denied.status_code == 401
        assert 'id="results"' not in denied.text
        by_ref = await log.client.get(f"/explorer/lookup?kind=token_ref&value={REF_A}")
        assert by_ref.status_code == 200
        assert 'href="/explorer/entry/0"' in by_ref.text
        assert "secret-client-7" not in by_ref.text
        events = (await log.client.get(f"/explorer/token/events.json?token_ref={REF_A}")).json()
        assert events["readable"] is False
        assert [set(r) for r in events["results"]] == [{"index", "leaf_hash", "log_time"}]
        bad = await log.client.get("/explorer/token/events.json?token_ref=abc")
        assert bad.status_code == 400


async def test_token_lookups_can_be_turned_off(tmp_path: Path) -> None:
    settings = OAuthSettings(public_token_ref_lookup=False)
    async with open_explorer_log(tmp_path, settings) as log:
        await _filled(log, 1)
        ref = token_ref(b"any")
        assert (
            await log.client.get(f"/explorer/token/events.json?token_ref={ref}")
        ).status_code == 401
        assert (await log.client.get(f"/explorer/token?token_ref={ref}")).status_code == 401
        assert (
            await log.client.get(f"/explorer/lookup?kind=token_ref&value={ref}")
        ).status_code == 401


async def test_reader_sign_in_reveals_contents_until_revoked(tmp_path: Path) -> None:
    async with open_explorer_log(tmp_path) as log:
        submitter = await log.oauth.add_submitter("as-1")
        event = sample_event("token-revoked", client_id="client-9")
        assert (await log.oauth.submit(submitter, event)).status_code == 201
        await log.cosign()
        reader = await log.oauth.add_reader("auditor")
        form = {"credential": reader, "next": "/explorer/lookup?kind=client_id&value=client-9"}
        wrong = await log.client.post("/explorer/signin", data={"credential": submitter.credential})
        assert wrong.status_code == 401
        assert COOKIE_NAME not in wrong.cookies
        forged = await log.client.post(
            "/explorer/signin", data=form, headers={"origin": "https://evil.example"}
        )
        assert forged.status_code == 403
        signed = await log.client.post("/explorer/signin", data=form)
        assert signed.status_code == 303
        assert signed.headers["location"] == form["next"]
        cookie = signed.headers["set-cookie"]
        assert all(part in cookie for part in ("HttpOnly", "SameSite=strict", "Path=/explorer"))
        session = signed.cookies[COOKIE_NAME]
        page = await log.client.get(form["next"])
        assert page.status_code == 200
        assert "client-9" in text_of(page.text)
        assert "Reader: auditor" in text_of(page.text)
        for html in (page.text, (await log.client.get("/explorer/entry/0")).text):
            _secrets_absent(log, html, reader, session, submitter.credential)
        assert "client-9" in (await log.client.get("/explorer/entry/0")).text
        await log.oauth.storage.set_principal_status("reader", "auditor", "revoked")
        after = await log.client.get(form["next"])
        assert after.status_code == 401
        assert "Reader: auditor" not in after.text
        outside = await log.client.post("/explorer/signin", data={**form, "next": "//evil.example"})
        assert outside.status_code == 401  # revoked: and never redirected off the explorer
        await log.oauth.storage.set_principal_status("reader", "auditor", "active")
        again = await log.client.post(
            "/explorer/signin", data={**form, "next": "https://x.example"}
        )
        assert again.headers["location"] == "/explorer"
        out = await log.client.post("/explorer/signout")
        assert out.status_code == 303
        assert (await log.client.get(form["next"])).status_code == 401


async def test_lookup_pages_through_results(tmp_path: Path) -> None:
    async with open_explorer_log(tmp_path, OAuthSettings(public_entries=True)) as log:
        submitter = await log.oauth.add_submitter("as-1")
        for _ in range(27):
            assert (
                await log.oauth.submit(submitter, sample_event("token-revoked"))
            ).status_code == 201
        await log.cosign()
        first = (await log.client.get("/explorer/lookup?kind=type&value=token-revoked")).text
        assert first.count('<tr><td><a href="/explorer/entry/') == 25
        match = re.search(r'href="([^"]+)" rel="next"', first)
        assert match is not None
        second = (await log.client.get(match.group(1).replace("&amp;", "&"))).text
        assert second.count('<tr><td><a href="/explorer/entry/') == 2
        assert 'rel="next"' not in second
        assert "First page" in second
        for query in ("kind=bogus&value=x", "kind=type&value=x&after=+1", "kind=token_ref&value=x"):
            assert (await log.client.get("/explorer/lookup?" + query)).status_code == 400


async def test_static_assets_are_versioned_and_cached(tmp_path: Path) -> None:
    async with open_explorer_log(tmp_path) as log:
        html = (await log.client.get("/explorer/token")).text
        for link in re.findall(r'(?:href|src)="(/explorer/static/[^"]+)"', html):
            response = await log.client.get(link)
            assert response.status_code == 200
            assert "immutable" in response.headers["cache-control"]
            assert response.headers["content-type"].startswith(("text/css", "text/javascript"))
        assert (await log.client.get("/explorer/static/explorer.js")).status_code == 404
