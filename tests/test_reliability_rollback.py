"""Rollback: a log whose database was restored from an older copy refuses to sign (issue 8 item 4).

The newest signed checkpoint is kept outside the database (:mod:`server.highwater`). Each test
builds a log, saves a copy of its database (SQLite: the file; PostgreSQL: every table of its
schema), grows the log, restores the copy under it and requires that the log refuses to start
with a reason naming the rollback; ``python -m server`` exits 1 with that reason. A database
*ahead* of the mark (a crash between the commit and the mark's write) starts and moves the mark
up. A witness answering 409 with a size larger than the log's makes the running log stop signing
and say why on ``/healthz``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from benchmarks.serve_raw import build_raw_service
from merkle.checkpoint import Checkpoint, format_checkpoint, open_checkpoint
from merkle.cosignature import CosignatureSigner
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Signer, generate_key, sign_note
from merkle.policy import parse_policy
from server.app import create_app
from server.config import load_settings
from server.highwater import HIGH_WATER_FILE_NAME, SLOT_SIZE, HighWaterMark
from server.keys import load_or_create_log_key
from server.log import LogService
from server.sequencer import IntegrityFailure, SequencerStopped, Submission
from server.storage import open_storage
from server.witnessing import SIZE_MEDIA_TYPE, WitnessCollector
from tests.server_helpers import BACKENDS, ORIGIN, PROJECT_ROOT, database, free_port

pytestmark = pytest.mark.anyio

TABLES = (
    "state",
    "entries",
    "leaf_hashes",
    "idempotency_keys",
    "lookup_keys",
    "tiles",
    "checkpoints",
    "cosigned_checkpoint",
    "meta",
)


def service_for(url: str, signer: Ed25519Signer, data_dir: Path) -> LogService:
    """A log service on ``url`` keeping its high-water mark in ``data_dir``."""
    return LogService(
        open_storage(url),
        signer,
        ORIGIN,
        batch_period=0.001,
        high_water=HighWaterMark.in_data_dir(data_dir),
    )


async def grow(url: str, signer: Ed25519Signer, data_dir: Path, count: int, tag: str) -> int:
    """Start the log, append ``count`` entries one round each, stop; return the tree size."""
    service = service_for(url, signer, data_dir)
    await service.start()
    try:
        for n in range(count):
            data = f"{tag}-{n}".encode()
            await service.submit([Submission(data, leaf_hash(data))])
        return service.tree_size
    finally:
        await service.stop()


class Snapshot:
    """A saved copy of a log's database: the SQLite file, or copies of the schema's tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith("postgresql://")
        self.copy = Path(url + ".copy") if not self.postgres else None

    async def save(self) -> None:
        if self.copy is not None:
            await asyncio.to_thread(_copy_sqlite, Path(self.url), self.copy)
            return
        conn = await asyncpg.connect(self.url)
        try:
            for table in TABLES:
                await conn.execute(f"CREATE TABLE saved_{table} AS TABLE {table}")
        finally:
            await conn.close()

    async def restore(self) -> None:
        if self.copy is not None:
            await asyncio.to_thread(_copy_sqlite, self.copy, Path(self.url))
            return
        conn = await asyncpg.connect(self.url)
        try:
            async with conn.transaction():
                for table in TABLES:
                    await conn.execute(f"TRUNCATE {table}")
                    await conn.execute(f"INSERT INTO {table} SELECT * FROM saved_{table}")
        finally:
            await conn.close()


def _copy_sqlite(source: Path, target: Path) -> None:
    """Copy an SQLite database file with its write-ahead log, replacing the target's files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
        if suffix != "-shm" and Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, request, tmp_path) as value:
        yield value


async def test_restored_older_database_refuses_to_sign(url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    signer = load_or_create_log_key(data_dir, ORIGIN).signer
    assert await grow(url, signer, data_dir, 5, "a") == 5
    snapshot = Snapshot(url)
    await snapshot.save()
    assert await grow(url, signer, data_dir, 4, "b") == 9
    mark = HighWaterMark.in_data_dir(data_dir).read()
    assert mark is not None
    assert open_checkpoint(mark, signer.verifier())[0].tree_size == 9

    await snapshot.restore()
    service = service_for(url, signer, data_dir)
    with pytest.raises(IntegrityFailure, match="database is behind") as refused:
        await service.start()
    await service.stop()
    assert "tree size 5" in str(refused.value)
    assert "size 9" in str(refused.value)
    assert HighWaterMark.in_data_dir(data_dir).read() == mark  # the mark is never lowered

    # The same refusal from a real process: exit status 1 and the reason on one line.
    command = [
        sys.executable,
        "-m",
        "server",
        "--data-dir",
        str(data_dir),
        "--origin",
        ORIGIN,
        "--port",
        str(free_port()),
        "--database-url",
        url,
    ]
    result = await asyncio.to_thread(
        subprocess.run,
        command,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("ETCH_")},
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "refusing to start" in lines[0]
    assert "database is behind the newest checkpoint this log signed" in lines[0]


async def test_database_ahead_of_the_mark_starts_and_raises_it(url: str, tmp_path: Path) -> None:
    """A crash after the commit, before the mark's write: the database is ahead, which is fine."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    signer = load_or_create_log_key(data_dir, ORIGIN).signer
    await grow(url, signer, data_dir, 3, "a")
    older = (data_dir / HIGH_WATER_FILE_NAME).read_bytes()
    await grow(url, signer, data_dir, 2, "b")
    (data_dir / HIGH_WATER_FILE_NAME).write_bytes(older)
    service = service_for(url, signer, data_dir)
    await service.start()
    try:
        assert service.tree_size == 5
        assert HighWaterMark.in_data_dir(data_dir).read() == service.sequencer.checkpoint
    finally:
        await service.stop()


def _fork_mark(signer: Ed25519Signer, size: int) -> bytes:
    return sign_note(format_checkpoint(Checkpoint(ORIGIN, size, bytes(32))), [signer])


def _other_key_mark(signer: Ed25519Signer, size: int) -> bytes:
    other = Ed25519Signer.from_private_key(generate_key(ORIGIN)[0])
    return sign_note(format_checkpoint(Checkpoint(ORIGIN, size, bytes(32))), [other])


@pytest.mark.parametrize(
    ("make_mark", "reason"),
    [(_fork_mark, "another tree at size 3"), (_other_key_mark, "does not verify")],
    ids=["same-size-other-root", "other-key"],
)
async def test_mark_of_another_history_refuses(
    url: str,
    tmp_path: Path,
    make_mark: Callable[[Ed25519Signer, int], bytes],
    reason: str,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    signer = load_or_create_log_key(data_dir, ORIGIN).signer
    await grow(url, signer, data_dir, 5, "a")
    HighWaterMark.in_data_dir(data_dir).write(make_mark(signer, 3))
    service = service_for(url, signer, data_dir)
    with pytest.raises(IntegrityFailure, match=reason):
        await service.start()
    await service.stop()


async def test_witness_ahead_stops_signing(tmp_path: Path) -> None:
    """A witness answers 409 with a size larger than the log's: the log stops signing."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    signer = load_or_create_log_key(data_dir, ORIGIN).signer
    witness = CosignatureSigner.generate("witness.example/w1")
    policy = parse_policy(
        f"log {signer.vkey}\nwitness w1 {witness.vkey} https://w1.example\nquorum w1\n"
    )
    requests: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request.content)
        return httpx.Response(409, content=b"1000\n", headers={"Content-Type": SIZE_MEDIA_TYPE})

    service = LogService(
        open_storage(str(tmp_path / "log.db")),
        signer,
        ORIGIN,
        batch_period=0.001,
        witnessed=True,
        high_water=HighWaterMark.in_data_dir(data_dir),
    )
    await service.start()
    result = await service.submit([Submission(b"first", leaf_hash(b"first"))])
    assert result[0].tree_size == 1
    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    collector = WitnessCollector(service, policy, client=client, retry_limit=0.2)
    service.collector = collector
    app = create_app(service, manage_service=False)
    try:
        await collector.start()
        for _ in range(1000):
            if service.sequencer.failure is not None:
                break
            await asyncio.sleep(0.01)
        assert requests, "the checkpoint was pushed"
        assert "witness w1 has cosigned size 1000, larger than this log's 1" in (
            service.sequencer.failure or ""
        )
        with pytest.raises(SequencerStopped, match="stopped signing"):
            await service.submit([Submission(b"second", leaf_hash(b"second"))])
        assert service.tree_size == 1
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://etch.test") as http:
            health = await http.get("/healthz")
            assert health.status_code == 503
            assert "witness w1 has cosigned size 1000" in health.json()["reason"]
            refused = await http.post("/v1/events", json={"k": "v"})
            assert refused.status_code == 503
    finally:
        await collector.stop()
        await client.aclose()
        await service.stop()


def test_mark_survives_a_torn_write(tmp_path: Path) -> None:
    """A write torn by a crash damages one slot; the previous note is read back instead."""
    mark = HighWaterMark(tmp_path / HIGH_WATER_FILE_NAME)
    assert mark.read() is None
    mark.write(b"first note\n")
    mark.write(b"second note\n")
    mark.close()
    assert HighWaterMark(mark.path).read() == b"second note\n"
    data = bytearray(mark.path.read_bytes())
    data[SLOT_SIZE + 60] ^= 0x01  # the second write went to slot 1: damage its note
    mark.path.write_bytes(bytes(data))
    assert HighWaterMark(mark.path).read() == b"first note\n"
    again = HighWaterMark(mark.path)
    again.write(b"third note\n")  # goes after the newest intact one, over the damaged slot
    again.close()
    assert HighWaterMark(mark.path).read() == b"third note\n"
    mark.path.write_bytes(b"\xff" * 100)
    with pytest.raises(ValueError, match="no intact slot"):
        HighWaterMark(mark.path).read()


async def test_unreadable_mark_refuses(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    signer = load_or_create_log_key(data_dir, ORIGIN).signer
    url = str(tmp_path / "log.db")
    await grow(url, signer, data_dir, 2, "a")
    await asyncio.to_thread((data_dir / HIGH_WATER_FILE_NAME).write_bytes, b"\x01" * 64)
    service = service_for(url, signer, data_dir)
    with pytest.raises(IntegrityFailure, match="cannot read the high-water mark"):
        await service.start()
    await service.stop()


async def test_the_benchmark_server_keeps_the_mark_as_etch_serve_does(tmp_path: Path) -> None:
    """``benchmarks.serve_raw`` measures the engine ``etch serve`` runs, mark flush included."""
    settings = load_settings(["--data-dir", str(tmp_path), "--batch-period-ms", "1"], {})
    service = build_raw_service(settings)
    await service.start()
    try:
        data = b"benchmark entry"
        await service.submit([Submission(data, leaf_hash(data))])
        latest = service.latest
    finally:
        await service.stop()
    assert latest is not None
    assert latest[1] == 1
    assert HighWaterMark(tmp_path / HIGH_WATER_FILE_NAME).read() == latest[0]
