"""The explorer in a real browser: headless Chromium against a live log and its witnesses.

Each page renders and passes its in-browser checks without console errors (a violation of the
Content-Security-Policy would be one); "my token" finds exactly the token's events and marks
them verified while the token itself never appears in any request; a proof tampered by the
test fixture is marked failed; the receipt downloads; every form control has a label, the
skip link comes first in keyboard order, pages fit a phone's width and work without the
script. Screenshots of each page are saved (see conftest).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

if os.environ.get("CI") != "true":  # under CI a missing Playwright is an error, not a skip
    pytest.importorskip("playwright.sync_api", reason="Playwright is missing: run `make browser`")

from playwright.sync_api import ConsoleMessage, Page, Request, expect

from client.tokens import token_ref
from merkle.checkpoint import parse_checkpoint
from merkle.note import parse_note
from server.explorer.demo import DEMO_TOKEN, submit_demo_events
from tests.browser.conftest import Screenshots
from tests.browser.live import FORKED_ORIGIN, TAMPERED_TOKEN, TOKEN, LiveStack
from tests.server_helpers import ORIGIN

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def problems(page: Page) -> Iterator[list[str]]:
    """Console errors and uncaught exceptions of the page; the test must leave none."""
    found: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            found.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: found.append(str(error)))
    yield found
    assert found == []


def _status(page: Page, selector: str) -> None:
    """Wait until an in-browser check reports success."""
    expect(page.locator(selector)).to_have_class(re.compile(r"\bok\b"))


def test_overview(
    page: Page, live_stack: LiveStack, screenshots: Screenshots, problems: list[str]
) -> None:
    page.goto(live_stack.log_url + "/")
    assert page.url == live_stack.log_url + "/explorer"
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator("#tree-size")).to_have_text(str(live_stack.published_size))
    expect(page.locator("#origin")).to_have_text(ORIGIN)
    expect(page.locator("#quorum")).to_contain_text("Quorum met")
    assert page.locator("text=✓ cosigned").count() >= 2
    expect(page.locator("svg.chart polyline")).to_have_count(1)
    _status(page, ".checkpoint-verify .browser-status")
    expect(page.locator(".checkpoint-verify .browser-status")).to_contain_text("witness-")
    screenshots.take(page, "overview")


def test_my_token_finds_and_verifies_events(
    page: Page, live_stack: LiveStack, screenshots: Screenshots, problems: list[str]
) -> None:
    sent: list[str] = []

    def on_request(request: Request) -> None:
        sent.append(request.url)
        sent.append(request.post_data or "")
        sent.extend(f"{k}: {v}" for k, v in request.all_headers().items())

    page.on("request", on_request)
    page.goto(live_stack.log_url + "/explorer/token")
    page.locator("#token-input").fill(TOKEN)
    page.locator("#token-input").press("Enter")
    expect(page.locator("#token-status")).to_contain_text("4 events: 4 verified, 0 failed")
    _status(page, "#token-status")
    items = page.locator("#token-events > li")
    indexes = {int(i) for i in items.evaluate_all("els => els.map(e => e.dataset.index)")}
    assert indexes == set(live_stack.token_events.indexes.values())
    for kind in ("token-issued", "token-refreshed", "token-introspected", "token-revoked"):
        expect(page.locator("#token-events h3", has_text=kind)).to_have_count(1)
    expect(page.locator('#token-events .badge[data-verified="true"]')).to_have_count(4)
    expect(page.locator("#token-ref")).to_have_text(token_ref(TOKEN.encode()))
    expect(page.locator("#token-summary")).to_contain_text("cosigned by witness-")
    screenshots.take(page, "my-token")
    assert not any(TOKEN in item for item in sent), "the token left the browser"
    assert any(token_ref(TOKEN.encode()) in item for item in sent)


def test_tampered_proof_is_marked_failed(
    page: Page, live_stack: LiveStack, screenshots: Screenshots, problems: list[str]
) -> None:
    bad = live_stack.tampered_events.indexes["token-introspected"]
    good = live_stack.tampered_events.indexes["token-issued"]
    live_stack.tamper({bad})
    try:
        page.goto(live_stack.log_url + "/explorer/token")
        page.locator("#token-input").fill(TAMPERED_TOKEN)
        page.get_by_role("button", name="Find and verify").click()
        expect(page.locator("#token-status")).to_contain_text("2 events: 1 verified, 1 failed")
        failed = page.locator(f'#token-events li[data-index="{bad}"] .badge')
        expect(failed).to_have_attribute("data-verified", "false")
        expect(failed).to_contain_text("failed")
        expect(page.locator(f'#token-events li[data-index="{good}"] .badge')).to_have_attribute(
            "data-verified", "true"
        )
        expect(page.locator("#token-status")).to_have_class(re.compile(r"\bbad\b"))
        screenshots.take(page, "my-token-tampered")
    finally:
        live_stack.tamper(set())


def test_entry_page_and_receipt(
    page: Page,
    live_stack: LiveStack,
    screenshots: Screenshots,
    problems: list[str],
    tmp_path: Path,
) -> None:
    index = live_stack.token_events.indexes["token-refreshed"]
    page.goto(live_stack.log_url + "/explorer")
    page.locator("#entry-index").fill(str(index))
    page.locator("#entry-index").press("Enter")
    expect(page.locator("h1")).to_have_text(f"Entry {index}")
    _status(page, "#entry-verify .browser-status")
    expect(page.locator("#server-check")).to_have_class(re.compile(r"\bok\b"))
    expect(page.locator("svg.proof-tree .node.root.ok")).to_have_count(1)
    expect(page.locator("main")).to_contain_text("token-refreshed")
    with page.expect_download() as info:
        page.locator("#receipt-download").click()
    saved = tmp_path / "receipt.tlog-proof"
    info.value.save_as(str(saved))
    assert saved.read_text("utf-8").startswith(f"c2sp.org/tlog-proof@v1\nindex {index}\n")
    screenshots.take(page, "entry")


def test_consistency_page(
    page: Page, live_stack: LiveStack, screenshots: Screenshots, problems: list[str]
) -> None:
    page.goto(live_stack.log_url + "/explorer/consistency")
    page.locator("#first").fill("3")
    page.locator("#second").fill(str(live_stack.published_size))
    page.locator("#second").press("Enter")
    expect(page.locator("#cons-h")).to_have_text(f"From 3 to {live_stack.published_size} leaves")
    _status(page, "#consistency-verify .browser-status")
    expect(page.locator("svg.consistency .range")).not_to_have_count(0)
    screenshots.take(page, "consistency")


def test_lookups_and_reader_sign_in(
    page: Page, live_stack: LiveStack, screenshots: Screenshots, problems: list[str]
) -> None:
    page.goto(live_stack.log_url + "/explorer/lookup")
    page.locator("#kind").select_option("type")
    page.locator("#value").fill("token-introspected")
    page.locator("#value").press("Enter")
    expect(page.locator("#results tbody tr")).to_have_count(2)
    page.get_by_role("link", name="Reader sign-in").click()
    page.locator("#credential").fill(live_stack.reader_credential)
    page.locator("#credential").press("Enter")
    expect(page.locator(".account")).to_contain_text("Reader: auditor")
    expect(page.locator("#results tbody tr")).to_have_count(2)
    assert live_stack.reader_credential not in page.content()
    screenshots.take(page, "lookup")
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator(".account")).to_contain_text("Reader sign-in")


def test_witness_pages(
    page: Page, live_stack: LiveStack, screenshots: Screenshots, problems: list[str]
) -> None:
    page.goto(live_stack.witness_urls[0] + "/explorer")
    expect(page.locator("#logs")).to_contain_text(ORIGIN)
    expect(page.locator("#logs")).to_contain_text("consistent so far")
    expect(page.locator("#no-evidence")).to_be_visible()
    expect(page.locator("main")).to_contain_text(live_stack.witness_urls[1])
    screenshots.take(page, "witness")
    page.goto(live_stack.witness_urls[2] + "/explorer")
    evidence = page.locator("article.evidence")
    expect(evidence).to_have_count(1)
    expect(evidence).to_contain_text(FORKED_ORIGIN)
    expect(evidence).to_contain_text("Fork proven")
    expect(evidence.locator(".side")).to_have_count(2)
    screenshots.take(page, "witness-fork-evidence")


_PAGES = ("/explorer", "/explorer/token", "/explorer/consistency", "/explorer/lookup")


def test_labels_keyboard_and_phone_width(
    page: Page, live_stack: LiveStack, screenshots: Screenshots, problems: list[str]
) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    for path in (*_PAGES, "/explorer/entry/0"):
        page.goto(live_stack.log_url + path)
        unlabeled = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select')]
                 .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label'))
                 .map(el => el.id || el.name)"""
        )
        assert unlabeled == [], path
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{path} is wider than a phone screen"
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.activeElement.className") == "skip"
        page.keyboard.press("Enter")
        assert page.evaluate("() => document.activeElement.id") == "main"
    page.goto(live_stack.log_url + "/explorer/token")
    screenshots.take(page, "my-token-phone")
    page.goto(live_stack.witness_urls[2] + "/explorer")
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1


def test_pages_work_without_the_script(
    page: Page, live_stack: LiveStack, screenshots: Screenshots
) -> None:
    page.route(re.compile(r".*/explorer/static/.*\.js$"), lambda route: route.abort())
    for path in (*_PAGES, "/explorer/entry/1"):
        response = page.goto(live_stack.log_url + path)
        assert response is not None
        assert response.status == 200, path
    ref = token_ref(TOKEN.encode())
    page.goto(live_stack.log_url + "/explorer/token")
    page.locator("#token-ref-input").fill(ref)
    page.get_by_role("button", name="List events").click()
    expect(page.locator("#results tbody tr")).to_have_count(4)
    screenshots.take(page, "my-token-without-script")
    page.goto(live_stack.log_url + "/explorer/token")
    page.locator("#token-input").fill(TOKEN)
    page.get_by_role("button", name="Find and verify").click()
    expect(page.locator(".notice.warn")).to_contain_text("not sent anywhere")
    assert TOKEN not in page.url


def test_demo_token_of_make_run(
    page: Page, live_stack: LiveStack, screenshots: Screenshots, problems: list[str]
) -> None:
    """What a newcomer does after ``make run``: paste the demo token, see its events verified.

    Runs last: it grows the log.
    """
    with httpx.Client(base_url=live_stack.log_url, timeout=10.0) as client:
        assert (
            submit_demo_events(client, live_stack.submitter_credential, live_stack.submitter_key)
            == 4
        )
        assert (
            submit_demo_events(client, live_stack.submitter_credential, live_stack.submitter_key)
            == 0
        )
        wanted = live_stack.published_size + 4
        deadline = time.monotonic() + 20
        while (
            parse_checkpoint(parse_note(client.get("/checkpoint").content).text).tree_size < wanted
        ):
            assert time.monotonic() < deadline, "the demo events were not cosigned in time"
            time.sleep(0.1)
    live_stack.published_size = wanted
    page.goto(live_stack.log_url + "/explorer/token")
    page.locator("#token-input").fill(DEMO_TOKEN)
    page.locator("#token-input").press("Enter")
    expect(page.locator("#token-status")).to_contain_text("4 events: 4 verified, 0 failed")
    screenshots.take(page, "demo-token")
