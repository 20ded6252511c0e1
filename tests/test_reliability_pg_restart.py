"""PostgreSQL goes down and comes back while clients submit to a real log process using it.

The log (``python -m server`` on PostgreSQL) keeps running throughout. While the database is
down (until every client has been refused at least once) every submission is answered 503 with
``Retry-After`` (a problem document, never a hang or
a 500); once it is back the log serves again by itself, without a restart of its own; and
nothing it acknowledged is lost: every acknowledged event is in the tiles at its index under
the final checkpoint, every checkpoint shown is consistent with the final one, and the events
refused or cut off during the outage are each logged exactly once when sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from merkle.checkpoint import Checkpoint
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Verifier
from tests.pg import PgServer
from tests.server_helpers import (
    LogProcess,
    RawConnection,
    check_consistency,
    check_submit_result,
    entry_bytes,
    open_note,
    pg_schema,
    read_tree,
    subtree_root,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CLIENTS = 16


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: when it was sent and answered, and the answer (status 0: connection lost)."""

    event: dict[str, Any]
    sent: float
    answered: float
    status: int
    body: Any
    retry_after: str | None


@dataclass
class Record:
    outcomes: list[Outcome] = field(default_factory=list)


async def client(port: int, number: int, record: Record, stop: asyncio.Event) -> None:
    """Submit distinct events until ``stop``; after a 503 wait a little, as Retry-After asks."""
    connection: RawConnection | None = None
    n = 0
    while not stop.is_set():
        event = {"pg": number, "n": n}
        n += 1
        sent = time.monotonic()
        try:
            if connection is None:
                connection = await RawConnection.open(port)
            response = await connection.post_json("/v1/events", event)
        except (OSError, asyncio.IncompleteReadError):
            record.outcomes.append(Outcome(event, sent, time.monotonic(), 0, None, None))
            connection = None
            await asyncio.sleep(0.05)
            continue
        body = response.json()
        outcome = Outcome(
            event,
            sent,
            time.monotonic(),
            response.status,
            body,
            response.headers.get("retry-after"),
        )
        record.outcomes.append(outcome)
        if response.status == 503:
            await asyncio.sleep(0.05)
    if connection is not None:
        await connection.close()


@pytest.fixture
async def log_on_pg(
    pg_server: PgServer, pg_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[LogProcess, PgServer]]:
    async with pg_schema(pg_dsn) as url:
        log = LogProcess(tmp_path / "data", database_url=url, batch_period_ms=5)
        try:
            yield log, pg_server
        finally:
            log.kill()
            pg_server.ensure_running()


async def test_postgres_restart_while_clients_submit(
    log_on_pg: tuple[LogProcess, PgServer],
) -> None:
    log, pg = log_on_pg
    await log.start()
    pid = log.pid
    verifier = Ed25519Verifier.from_vkey(log.vkey())
    record = Record()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client(log.port, c, record, stop)) for c in range(CLIENTS)]
    try:
        await asyncio.sleep(0.7)
        down_from = time.monotonic()
        await asyncio.to_thread(pg.stop, "fast")
        down = time.monotonic()
        # Keep it down until every client has had a refusal (the log backs off between
        # attempts, up to 2 s, so a refusal may take a while), at least 1 s, at most 20 s.
        await asyncio.sleep(1.0)
        deadline = down + 20
        while time.monotonic() < deadline:
            turned_away = {
                o.event["pg"] for o in record.outcomes if o.sent > down and o.status == 503
            }
            if len(turned_away) == CLIENTS:
                break
            await asyncio.sleep(0.05)
        up_from = time.monotonic()
        await asyncio.to_thread(pg.start)
        up = time.monotonic()
        # The log must serve again by itself: wait for successes sent after the restart.
        deadline = up + 30
        while time.monotonic() < deadline:
            after = [o for o in record.outcomes if o.sent > up and o.status == 201]
            if len(after) >= 2 * CLIENTS:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)

    assert log.is_running(), "the log died"
    assert (log.pid, log.starts) == (pid, 1), "the log was restarted"
    outcomes = record.outcomes
    assert {o.status for o in outcomes} <= {201, 503}, sorted({o.status for o in outcomes})
    before = [o for o in outcomes if o.answered < down_from and o.status == 201]
    during = [o for o in outcomes if o.sent > down and o.answered < up_from]
    after = [o for o in outcomes if o.sent > up and o.status == 201]
    assert len(before) >= CLIENTS, "hardly any submission before the outage"
    assert len({o.event["pg"] for o in during}) == CLIENTS, "a client got no refusal"
    for outcome in during:
        assert outcome.status == 503, outcome
        assert outcome.body["type"] == "urn:etch:error:unavailable"
        assert outcome.retry_after is not None
        assert int(outcome.retry_after) >= 1
    assert len(after) >= 2 * CLIENTS, "the log did not recover within 30 s"

    async with httpx.AsyncClient(base_url=log.base_url, timeout=30) as api:
        assert (await api.get("/healthz")).status_code == 200
        # Acknowledged events and every checkpoint shown.
        acknowledged: dict[bytes, int] = {}
        shown: dict[int, Checkpoint] = {}
        for outcome in outcomes:
            if outcome.status == 201:
                entry = entry_bytes(outcome.event)
                checkpoint = check_submit_result(outcome.body, entry, verifier, vkey=log.vkey())
                shown[checkpoint.tree_size] = checkpoint
                acknowledged[leaf_hash(entry)] = outcome.body["index"]
        # The refused ones are sent again: each gets exactly one index.
        refused = [o.event for o in outcomes if o.status != 201]
        for start in range(0, len(refused), 200):
            chunk = refused[start : start + 200]
            response = await api.post("/v1/events/batch", json=chunk)
            assert response.status_code == 200, response.text
            for event, result in zip(chunk, response.json()["results"], strict=True):
                check_submit_result(result, entry_bytes(event), verifier, vkey=log.vkey())
                acknowledged[leaf_hash(entry_bytes(event))] = result["index"]

        final = open_note((await api.get("/checkpoint")).content, verifier)
        for checkpoint in shown.values():
            await check_consistency(api, checkpoint, final)
        snapshot = await read_tree(api, final.tree_size)
        assert subtree_root(snapshot.leaf_hashes) == final.root_hash
        assert len(set(snapshot.leaf_hashes)) == final.tree_size, "an event is logged twice"
        assert (
            final.tree_size
            == len(acknowledged)
            == len({leaf_hash(entry_bytes(o.event)) for o in outcomes})
        )
        for value, index in acknowledged.items():
            assert snapshot.leaf_hashes[index] == value, f"acknowledged entry {index} lost"
    assert log.pid == pid
    assert log.is_running()
