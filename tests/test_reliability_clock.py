"""Clock skew (issue 8 item 5): a system clock stepped back never makes time go backwards.

The log's clock (:class:`server.sequencer.MonotonicClock`) and the witness's clock are injected.
Stepping them back an hour, while running and across a restart, leaves log times (stored per
entry) and cosignature timestamps non-decreasing. A stored entry or cosigned checkpoint from the
future is reported at start (warning log, ``/healthz`` ``warnings``) without stopping the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from merkle.cosignature import CosignatureSigner, cosignature_timestamp
from merkle.note import Note, format_note, parse_note, parse_signature_lines
from server.app import create_app
from server.log import LogService
from server.sequencer import MonotonicClock
from server.storage import open_storage
from tests.server_helpers import BACKENDS, ORIGIN, database, make_signer
from tests.witness_support import FakeLog, add_checkpoint_body, in_process_witness
from witness.storage import open_storage as open_witness_storage

pytestmark = pytest.mark.anyio

NOW = 1_767_225_600.0
HOUR = 3600.0


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, request, tmp_path) as value:
        yield value


class SteppableLog:
    """A log on ``url`` whose system clock is ``self.now`` (seconds), behind its HTTP app."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.signer = make_signer()
        self.now = NOW

    def service(self, *, witnessed: bool = False) -> LogService:
        clock = MonotonicClock(lambda: self.now)
        return LogService(
            open_storage(self.url),
            self.signer,
            ORIGIN,
            batch_period=0.001,
            clock=clock,
            witnessed=witnessed,
        )


async def submit(client: httpx.AsyncClient, tag: str, count: int) -> list[int]:
    indexes = []
    for n in range(count):
        response = await client.post("/v1/events", json={"k": tag, "n": n})
        assert response.status_code == 201, response.text
        indexes.append(response.json()["index"])
    return indexes


async def log_times(service: LogService, size: int) -> list[int]:
    times = []
    for index in range(size):
        meta = await service.storage.read_entry_meta(index)
        assert meta is not None
        times.append(meta[1])
    return times


async def test_log_times_never_go_backwards(url: str) -> None:
    log = SteppableLog(url)
    service = log.service()
    app = create_app(service)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://etch.test") as client:
            await submit(client, "before", 3)
            log.now -= HOUR  # the system clock is stepped back an hour
            await submit(client, "after", 3)
            times = await log_times(service, 6)
    assert times == sorted(times)
    assert times[0] == int(NOW * 1000)
    assert min(times[3:]) >= times[2]

    # Restart with the clock still an hour behind: log times continue from the stored newest.
    restarted = log.service()
    app = create_app(restarted)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://etch.test") as client:
            await submit(client, "restarted", 2)
            times = await log_times(restarted, 8)
            health = (await client.get("/healthz")).json()
    assert times == sorted(times)
    assert min(times[6:]) >= times[5]
    # The stored entries are an hour ahead of the stepped-back clock: reported, not fatal.
    assert health["status"] == "ok"
    assert len(health["warnings"]) == 1
    assert "3600 s ahead of the system clock" in health["warnings"][0]


async def test_entry_from_the_future_is_reported(url: str) -> None:
    log = SteppableLog(url)
    log.now = NOW + 2 * HOUR
    service = log.service()
    app = create_app(service)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://etch.test") as client:
            await submit(client, "future", 1)
    log.now = NOW
    restarted = log.service()
    app = create_app(restarted)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://etch.test") as client:
            health = await client.get("/healthz")
            assert health.status_code == 200  # reported, not fatal
            warnings = health.json()["warnings"]
            assert len(warnings) == 1
            assert "entry (0)" in warnings[0]
            assert "7200 s ahead of the system clock" in warnings[0]
            await submit(client, "now", 1)
            times = await log_times(restarted, 2)
    assert times[1] >= times[0] == int((NOW + 2 * HOUR) * 1000)


async def test_cosigned_checkpoint_from_the_future_is_reported(url: str) -> None:
    log = SteppableLog(url)
    service = log.service()
    await service.start()
    try:
        note = service.sequencer.checkpoint
        assert note is not None
        parsed = parse_note(note)
        witness = CosignatureSigner.generate("witness.example/w1")
        cosignature = witness.sign_at(parsed.text, int(NOW + 3 * HOUR))
        cosigned = format_note(Note(parsed.text, (*parsed.signatures, cosignature)))
        await service.storage.put_cosigned_checkpoint(0, cosigned)
    finally:
        await service.stop()
    restarted = log.service(witnessed=True)
    await restarted.start()
    try:
        assert len(restarted.warnings) == 1
        assert "cosignature by witness.example/w1" in restarted.warnings[0]
        assert "10800 s ahead" in restarted.warnings[0]
        assert restarted.healthy == (True, "ok")
    finally:
        await restarted.stop()


async def test_cosignature_timestamps_never_go_backwards(tmp_path: Path) -> None:
    fake = FakeLog()
    fake.append(3)
    signer = CosignatureSigner.generate("witness.example/w1")
    timestamps: list[int] = []
    storage = await open_witness_storage(tmp_path / "witness.sqlite3")
    try:
        async with in_process_witness(storage, [fake.config()], signer=signer) as w:
            w.clock[0] = NOW
            old = 0
            for step in range(3):
                body = add_checkpoint_body(
                    old, fake.consistency_proof(old) if old else [], fake.checkpoint()
                )
                response = await w.client.post("/add-checkpoint", content=body)
                assert response.status_code == 200, response.text
                (line,) = parse_signature_lines(response.content)
                timestamps.append(cosignature_timestamp(line))
                old = fake.size
                fake.append(2)
                if step == 0:
                    w.clock[0] -= HOUR  # stepped back while running
    finally:
        await storage.close()
    storage = await open_witness_storage(tmp_path / "witness.sqlite3")
    try:
        async with in_process_witness(storage, [fake.config()], signer=signer) as w:
            w.clock[0] = NOW - 2 * HOUR  # and again across a restart
            body = add_checkpoint_body(old, fake.consistency_proof(old), fake.checkpoint())
            response = await w.client.post("/add-checkpoint", content=body)
            assert response.status_code == 200, response.text
            (line,) = parse_signature_lines(response.content)
            timestamps.append(cosignature_timestamp(line))
    finally:
        await storage.close()
    assert timestamps == sorted(timestamps)
    assert timestamps[0] == int(NOW)
    assert timestamps[-1] == int(NOW)
