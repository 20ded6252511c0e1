"""The witness's page, in process: followed logs, cosigned checkpoints, peers, fork evidence."""

from __future__ import annotations

from pathlib import Path

import pytest

from merkle.checkpoint import parse_checkpoint
from merkle.note import parse_note
from tests.explorer_support import text_of
from tests.witness_support import FakeLog, add_checkpoint_body, in_process_witness
from witness.evidence import KIND_SAME_SIZE, Observation, make_record
from witness.storage import open_storage

pytestmark = pytest.mark.anyio

HOSTILE = "<script>alert(1)</script>"


async def test_witness_page(tmp_path: Path) -> None:
    storage = await open_storage(tmp_path / "w.sqlite3")
    honest, forked = FakeLog("example.com/honest"), FakeLog("example.com/forked")
    peers = ("http://peer-1.example", "javascript:alert(1)")
    try:
        async with in_process_witness(
            storage, [honest.config("https://log.example"), forked.config()], peers=peers
        ) as setup:
            empty = await setup.client.get("/explorer")
            assert empty.status_code == 200
            assert "nothing cosigned yet" in empty.text
            assert 'id="no-evidence"' in empty.text
            honest.append(5)
            added = await setup.client.post(
                "/add-checkpoint", content=add_checkpoint_body(0, [], honest.publish())
            )
            assert added.status_code == 200
            forked.append(4)
            other = forked.fork(2)
            other.append(2, tag=b"x")
            sides = [
                Observation(note, parse_checkpoint(parse_note(note).text), source)
                for note, source in (
                    (forked.checkpoint(4), "stored"),
                    (other.checkpoint(4), "peer"),
                )
            ]
            record = make_record(
                kind=KIND_SAME_SIZE,
                first=sides[0],
                second=sides[1],
                proof=[],
                reason=HOSTILE,
                now_ms=1_767_225_600_000,
                witness=setup.witness.name,
            )
            assert await setup.witness.record_evidence(record) is not None
            response = await setup.client.get("/explorer")
            html = response.text
            text = text_of(html)
    finally:
        await storage.close()
    assert response.status_code == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert "size 5" in text
    assert honest.root(5).hex() in html
    assert "cosigned 2026-01-01 00:00:00 UTC" in text  # the witness's own cosignature time
    assert "✓ consistent so far" in text
    assert "✗ blocked: 1 evidence record(s)" in text
    assert '<a href="http://peer-1.example">' in html
    assert 'href="javascript:' not in html
    assert html.count('<div class="side">') == 2
    assert forked.root(4).hex() in html
    assert other.root(4).hex() in html
    assert "Fork proven" in text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert setup.witness.signer.private_key not in html
    css = html.split('rel="stylesheet" href="', 1)[1].split('"', 1)[0]
    assert css.startswith("/explorer/static/explorer.")
