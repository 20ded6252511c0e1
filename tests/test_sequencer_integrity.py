"""Start-up integrity (ARCHITECTURE.md invariants 3 and 4): a log whose stored hashes, entries,
frontier or checkpoint were altered behind its back refuses to start, and says why.

One log of 300 entries per backend is built through the API (a full level-0 tile, a partial one,
a partial level-1 tile). Each case alters the database directly, checks that the service refuses
to start with :class:`server.sequencer.IntegrityFailure`, then restores the original bytes and
checks that the same database starts again (so the refusal is due to the alteration alone).
``python -m server`` on an altered database exits with status 1 and a one-line reason.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from merkle.note import Ed25519Signer, parse_note, sign_note
from server.keys import load_or_create_log_key
from server.log import LogService
from server.sequencer import IntegrityFailure
from server.storage import open_storage
from tests.server_helpers import (
    BACKENDS,
    ORIGIN,
    PROJECT_ROOT,
    database,
    free_port,
    make_signer,
    open_log,
)

pytestmark = pytest.mark.anyio

TileKey = tuple[int, int]


class RawDb:
    """Direct access to a log's tables, to alter them as an intruder with database access would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith("postgresql://")

    async def _pg(self, sql: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    def _sqlite(self, sql: str, *args: Any) -> list[Any]:
        conn = sqlite3.connect(self.url)
        try:
            with conn:
                return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    async def run(self, sql: str, *args: Any) -> list[Any]:
        """Run one statement (``$1`` placeholders; rewritten to ``?`` for SQLite)."""
        if self.postgres:
            return await self._pg(sql, *args)
        for n in range(len(args), 0, -1):
            sql = sql.replace(f"${n}", "?")
        return self._sqlite(sql, *args)

    async def tile(self, key: TileKey) -> bytes | None:
        rows = await self.run(
            "SELECT data FROM tiles WHERE level = $1 AND tile_index = $2", key[0], key[1]
        )
        return bytes(rows[0][0]) if rows else None

    async def set_tile(self, key: TileKey, data: bytes | None) -> None:
        await self.run("DELETE FROM tiles WHERE level = $1 AND tile_index = $2", key[0], key[1])
        if data is not None:
            await self.run(
                "INSERT INTO tiles (level, tile_index, data) VALUES ($1, $2, $3)",
                key[0],
                key[1],
                data,
            )

    async def state(self) -> tuple[bytes, int, bytes]:
        rows = await self.run("SELECT checkpoint, tree_size, compact_range FROM state")
        (checkpoint, tree_size, compact_range) = rows[0]
        return bytes(checkpoint), int(tree_size), bytes(compact_range)

    async def set_state(self, checkpoint: bytes, tree_size: int, compact_range: bytes) -> None:
        await self.run(
            "UPDATE state SET checkpoint = $1, tree_size = $2, compact_range = $3",
            checkpoint,
            tree_size,
            compact_range,
        )

    async def entry(self, index: int) -> tuple[bytes, int, bytes] | None:
        """``(data, log_time, leaf_hash)`` of the entry at ``index``, or ``None``."""
        rows = await self.run(
            "SELECT e.data, e.log_time, h.leaf_hash FROM entries e"
            " JOIN leaf_hashes h ON h.leaf_index = e.leaf_index WHERE e.leaf_index = $1",
            index,
        )
        return (bytes(rows[0][0]), int(rows[0][1]), bytes(rows[0][2])) if rows else None

    async def set_entry(self, index: int, row: tuple[bytes, int, bytes] | None) -> None:
        """Replace (or with ``None`` delete) the entry at ``index`` and its leaf hash row."""
        await self.run("DELETE FROM leaf_hashes WHERE leaf_index = $1", index)
        await self.run("DELETE FROM entries WHERE leaf_index = $1", index)
        if row is not None:
            data, log_time, value = row
            await self.run(
                "INSERT INTO entries (leaf_index, data, log_time) VALUES ($1, $2, $3)",
                index,
                data,
                log_time,
            )
            await self.run(
                "INSERT INTO leaf_hashes (leaf_hash, leaf_index) VALUES ($1, $2)", value, index
            )

    async def history(self) -> list[bytes]:
        rows = await self.run("SELECT note FROM checkpoints ORDER BY tree_size")
        return [bytes(row[0]) for row in rows]


def flip(data: bytes, at: int) -> bytes:
    """``data`` with one bit of byte ``at`` flipped."""
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def flip_text(note: bytes, line: int) -> bytes:
    """A note with one base64 character of line ``line`` changed (still valid base64)."""
    lines = note.split(b"\n")
    target = lines[line]
    position = target.rfind(b"=") - 3 if b"=" in target else len(target) - 3
    old = target[position : position + 1]
    lines[line] = target[:position] + (b"B" if old != b"B" else b"C") + target[position + 1 :]
    return b"\n".join(lines)


@dataclass(frozen=True, slots=True)
class BuiltLog:
    """A database holding a log of 300 entries, and the key it was signed with."""

    url: str
    signer: Ed25519Signer


async def build(url: str, signer: Ed25519Signer) -> BuiltLog:
    async with open_log(url, signer=signer) as log:
        await log.fill(300)
        for n in range(3):
            await log.submit_ok({"extra": n})
    return BuiltLog(url, signer)


async def start(built: BuiltLog) -> LogService:
    """Start a service on the built database (the caller stops it)."""
    service = LogService(open_storage(built.url), built.signer, ORIGIN)
    try:
        await service.start()
    except BaseException:
        await service.storage.close()
        raise
    return service


@pytest.fixture(scope="module", params=BACKENDS)
async def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BuiltLog]:
    async with database(request.param, request, tmp_path_factory.mktemp("integrity")) as url:
        yield await build(url, make_signer())


Tamper = Callable[[RawDb], Awaitable[None]]


def alter_tile(key: TileKey, hash_number: int) -> Tamper:
    async def tamper(db: RawDb) -> None:
        data = await db.tile(key)
        assert data is not None
        assert len(data) > 32 * hash_number
        await db.set_tile(key, flip(data, 32 * hash_number + 7))

    return tamper


def truncate_tile(key: TileKey) -> Tamper:
    async def tamper(db: RawDb) -> None:
        data = await db.tile(key)
        assert data is not None
        await db.set_tile(key, data[:-32])

    return tamper


def delete_tile(key: TileKey) -> Tamper:
    async def tamper(db: RawDb) -> None:
        await db.set_tile(key, None)

    return tamper


def alter_entry(index: int) -> Tamper:
    """Replace an entry's bytes (its stored leaf hash and the tiles are left alone)."""

    async def tamper(db: RawDb) -> None:
        row = await db.entry(index)
        assert row is not None
        await db.set_entry(index, (flip(row[0], len(row[0]) - 1), row[1], row[2]))

    return tamper


def delete_entry(index: int) -> Tamper:
    async def tamper(db: RawDb) -> None:
        await db.set_entry(index, None)

    return tamper


async def alter_compact_range(db: RawDb) -> None:
    checkpoint, size, compact = await db.state()
    await db.set_state(checkpoint, size, flip(compact, len(compact) - 5))


async def alter_tree_size(db: RawDb) -> None:
    checkpoint, size, compact = await db.state()
    await db.set_state(checkpoint, size + 1, compact)


async def alter_checkpoint_root(db: RawDb) -> None:
    checkpoint, size, compact = await db.state()
    await db.set_state(flip_text(checkpoint, 2), size, compact)


async def alter_checkpoint_signature(db: RawDb) -> None:
    checkpoint, size, compact = await db.state()
    signature_line = checkpoint.rstrip(b"\n").count(b"\n")
    await db.set_state(flip_text(checkpoint, signature_line), size, compact)


async def older_checkpoint(db: RawDb) -> None:
    _, size, compact = await db.state()
    history = await db.history()
    await db.set_state(history[-2], size, compact)


async def checkpoint_of_another_key(db: RawDb) -> None:
    """The same checkpoint text, well signed, by a key of the log's name that is not its key."""
    checkpoint, size, compact = await db.state()
    text = parse_note(checkpoint).text
    await db.set_state(sign_note(text, [make_signer()]), size, compact)


CASES: dict[str, tuple[Tamper, str]] = {
    "level0-full-tile": (alter_tile((0, 0), 5), r"tile \(0, 0\)"),
    "level0-full-tile-last-hash": (alter_tile((0, 0), 255), r"tile \(0, 0\)"),
    "level0-partial-tile": (alter_tile((0, 1), 3), "root"),
    "level0-partial-tile-last-hash": (alter_tile((0, 1), 46), "root"),
    "level1-partial-tile": (alter_tile((1, 0), 0), "root|tile"),
    "partial-tile-truncated": (truncate_tile((0, 1)), "cover|tile"),
    "partial-tile-missing": (delete_tile((0, 1)), "cover|tile"),
    "full-tile-missing": (delete_tile((0, 0)), "cover|tile"),
    "entry-in-full-tile": (alter_entry(5), "entry 5"),
    "entry-in-partial-tile": (alter_entry(300), "entry 300"),
    "entry-missing": (delete_entry(302), "entries"),
    "compact-range": (alter_compact_range, "compact range"),
    "tree-size": (alter_tree_size, "sizes"),
    "checkpoint-root": (alter_checkpoint_root, "checkpoint"),
    "checkpoint-signature": (alter_checkpoint_signature, "checkpoint"),
    "checkpoint-older": (older_checkpoint, "sizes"),
    "checkpoint-other-key": (checkpoint_of_another_key, "checkpoint"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_altered_database_refuses_to_start(built: BuiltLog, case: str) -> None:
    tamper, reason = CASES[case]
    db = RawDb(built.url)
    state = await db.state()
    tiles = {key: await db.tile(key) for key in ((0, 0), (0, 1), (1, 0))}
    entries = {index: await db.entry(index) for index in (5, 300, 302)}
    assert state[1] == 303
    await tamper(db)
    try:
        service = LogService(open_storage(built.url), built.signer, ORIGIN)
        try:
            with pytest.raises(IntegrityFailure, match=reason) as refused:
                await service.start()
        finally:
            await service.stop()
        assert "\n" not in str(refused.value)
    finally:
        await db.set_state(*state)
        for key, data in tiles.items():
            await db.set_tile(key, data)
        for index, row in entries.items():
            await db.set_entry(index, row)
    service = await start(built)  # restored: it starts, so the alteration alone was refused
    try:
        assert service.tree_size == 303
    finally:
        await service.stop()


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
async def test_python_m_server_exits_1_with_one_line(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    key = load_or_create_log_key(data_dir, ORIGIN)
    async with database(backend, request, tmp_path) as url:
        sqlite = backend == "sqlite"
        built = await build(str(data_dir / "log.db") if sqlite else url, key.signer)
        await alter_tile((0, 0), 17)(RawDb(built.url))
        command = [
            sys.executable,
            "-m",
            "server",
            "--data-dir",
            str(data_dir),
            "--origin",
            ORIGIN,
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ]
        if not sqlite:
            command += ["--database-url", url]
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
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("etch serve: refusing to start, the stored log does not verify:")
    assert "tile (0, 0)" in lines[0]
