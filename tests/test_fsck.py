"""``etch fsck`` (server/fsck.py): one flipped bit anywhere in a log's database is found and named.

One log of 303 entries per backend (a full level-0 tile, a partial one, a partial level-1 tile,
a history of five checkpoints, a cosigned checkpoint). Each case flips one bit (or replaces one
record) directly in the database, runs the check, requires exactly one problem at the exact
location, restores the bytes and requires a clean report again. Corruptions of the tree itself
(entry, leaf-hash index row, tile) also make the log refuse to start. The command line exits 1
and prints the location.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.cli import main as etch_main
from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.cosignature import CosignatureSigner
from merkle.note import Ed25519Signer, Note, format_note, parse_note, sign_note
from server.fsck import FsckReport, fsck
from server.log import LogService
from server.sequencer import IntegrityFailure
from server.storage import open_storage
from tests.server_helpers import BACKENDS, ORIGIN, database, make_signer
from tests.test_sequencer_integrity import RawDb, build, flip, flip_text

pytestmark = pytest.mark.anyio


@dataclass(frozen=True, slots=True)
class Built:
    """A database holding a 303-entry log, the key it was signed with, and a data directory."""

    url: str
    signer: Ed25519Signer
    data_dir: Path


@pytest.fixture(scope="module", params=BACKENDS)
async def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Built]:
    tmp = tmp_path_factory.mktemp("fsck")
    async with database(request.param, request, tmp) as url:
        signer = make_signer()
        await build(url, signer)
        storage = open_storage(url)
        await storage.open()
        try:
            state = await storage.load_state()
            assert state is not None
            witness = CosignatureSigner.generate("witness.example/w1")
            parsed = parse_note(state.checkpoint)
            cosignature = witness.sign_at(parsed.text, 1)
            cosigned = format_note(Note(parsed.text, (*parsed.signatures, cosignature)))
            await storage.put_cosigned_checkpoint(state.tree_size, cosigned)
        finally:
            await storage.close()
        data_dir = tmp / "data"
        data_dir.mkdir()
        (data_dir / "log.vkey").write_text(signer.vkey + "\n", encoding="ascii")
        yield Built(url, signer, data_dir)


async def run_fsck(built: Built) -> FsckReport:
    storage = open_storage(built.url)
    await storage.open()
    try:
        return await fsck(storage, built.signer.verifier())
    finally:
        await storage.close()


Tamper = Callable[[RawDb], Awaitable[Callable[[], Awaitable[None]]]]
"""Alters the database and returns the coroutine function that restores it."""


def flip_entry(index: int) -> Tamper:
    async def tamper(db: RawDb) -> Callable[[], Awaitable[None]]:
        row = await db.entry(index)
        assert row is not None
        await db.run(
            "UPDATE entries SET data = $1 WHERE leaf_index = $2",
            flip(row[0], len(row[0]) // 2),
            index,
        )

        async def restore() -> None:
            await db.run("UPDATE entries SET data = $1 WHERE leaf_index = $2", row[0], index)

        return restore

    return tamper


def flip_leaf_hash(index: int) -> Tamper:
    async def tamper(db: RawDb) -> Callable[[], Awaitable[None]]:
        row = await db.entry(index)
        assert row is not None
        sql = "UPDATE leaf_hashes SET leaf_hash = $1 WHERE leaf_index = $2"
        await db.run(sql, flip(row[2], 31), index)

        async def restore() -> None:
            await db.run(sql, row[2], index)

        return restore

    return tamper


def flip_tile(key: tuple[int, int], hash_number: int) -> Tamper:
    async def tamper(db: RawDb) -> Callable[[], Awaitable[None]]:
        data = await db.tile(key)
        assert data is not None
        await db.set_tile(key, flip(data, 32 * hash_number + 11))

        async def restore() -> None:
            await db.set_tile(key, data)

        return restore

    return tamper


def history_note(
    size: int, change: Callable[[bytes, Ed25519Signer], bytes]
) -> Callable[..., Tamper]:
    def factory(signer: Ed25519Signer) -> Tamper:
        async def tamper(db: RawDb) -> Callable[[], Awaitable[None]]:
            sql = "SELECT note FROM checkpoints WHERE tree_size = $1"
            note = bytes((await db.run(sql, size))[0][0])
            update = "UPDATE checkpoints SET note = $1 WHERE tree_size = $2"
            await db.run(update, change(note, signer), size)

            async def restore() -> None:
                await db.run(update, note, size)

            return restore

        return tamper

    return factory


def _bad_signature(note: bytes, signer: Ed25519Signer) -> bytes:
    return flip_text(note, note.rstrip(b"\n").count(b"\n"))


def _second_history(note: bytes, signer: Ed25519Signer) -> bytes:
    """The same size, well signed by the log's key, with another root: a forked checkpoint."""
    text = parse_note(note).text
    size = int(text.split("\n")[1])
    return sign_note(format_checkpoint(Checkpoint(ORIGIN, size, bytes(32))), [signer])


def cosigned_note(signer: Ed25519Signer) -> Tamper:
    async def tamper(db: RawDb) -> Callable[[], Awaitable[None]]:
        note = bytes((await db.run("SELECT note FROM cosigned_checkpoint"))[0][0])
        update = "UPDATE cosigned_checkpoint SET note = $1"
        await db.run(update, flip_text(note, 2))

        async def restore() -> None:
            await db.run(update, note)

        return restore

    return tamper


# name: (tamper factory taking the log's signer, exact location, refuses to start)
CASES: dict[str, tuple[Callable[[Ed25519Signer], Tamper], str, bool]] = {
    "entry-full-tile": (lambda s: flip_entry(5), "entry 5", True),
    "entry-partial-tile": (lambda s: flip_entry(300), "entry 300", True),
    "leaf-hash-row": (lambda s: flip_leaf_hash(7), "leaf-hash index of entry 7", True),
    "leaf-hash-row-partial": (lambda s: flip_leaf_hash(301), "leaf-hash index of entry 301", True),
    "tile-level0-full": (lambda s: flip_tile((0, 0), 5), "tile/0/000 hash 5", True),
    "tile-level0-full-last": (lambda s: flip_tile((0, 0), 255), "tile/0/000 hash 255", True),
    "tile-level0-partial": (lambda s: flip_tile((0, 1), 3), "tile/0/001.p/47 hash 3", True),
    "tile-level1-partial": (lambda s: flip_tile((1, 0), 0), "tile/1/000.p/1 hash 0", True),
    "history-signature": (
        history_note(301, _bad_signature),
        "checkpoint history at size 301",
        False,
    ),
    "history-second-root": (
        history_note(302, _second_history),
        "checkpoint history at size 302",
        False,
    ),
    "cosigned-checkpoint": (cosigned_note, "cosigned checkpoint", False),
}


async def test_sound_database_passes(built: Built) -> None:
    report = await run_fsck(built)
    assert report.problems == ()
    assert report.ok
    assert report.tree_size == 303
    assert report.entries == 303
    assert report.tiles == 3  # tile/0/000, tile/0/001.p/47, tile/1/000.p/1
    assert report.checkpoints >= 5  # latest, a history of at least 4 sizes, the cosigned one


@pytest.mark.parametrize("case", list(CASES))
async def test_one_flipped_bit_is_named(built: Built, case: str) -> None:
    factory, location, refuses = CASES[case]
    db = RawDb(built.url)
    restore = await factory(built.signer)(db)
    try:
        report = await run_fsck(built)
        assert [p.location for p in report.problems] == [location], report.problems
        assert not report.ok
        if refuses:
            service = LogService(open_storage(built.url), built.signer, ORIGIN)
            try:
                with pytest.raises(IntegrityFailure):
                    await service.start()
            finally:
                await service.stop()
    finally:
        await restore()
    assert (await run_fsck(built)).ok


def _cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = etch_main(["fsck", *args])
    return status, out.getvalue(), err.getvalue()


def _cli_args(built: Built) -> list[str]:
    args = ["--data-dir", str(built.data_dir)]
    return [*args, "--database-url", built.url]


async def test_command_line_exit_status_and_location(built: Built) -> None:
    status, out, _ = await asyncio.to_thread(_cli, _cli_args(built))
    assert status == 0, out
    assert "etch fsck: ok: tree size 303, 303 entries, 3 tiles" in out
    restore = await flip_tile((0, 0), 17)(RawDb(built.url))
    try:
        status, out, err = await asyncio.to_thread(_cli, _cli_args(built))
        assert status == 1
        assert out.startswith("tile/0/000 hash 17: holds ")
        assert out.count("\n") == 1
        assert "etch fsck: 1 problem(s)" in err
        status, out, _ = await asyncio.to_thread(_cli, [*_cli_args(built), "--json"])
        assert status == 1
        document = json.loads(out)
        assert document["ok"] is False
        assert [p["location"] for p in document["problems"]] == ["tile/0/000 hash 17"]
    finally:
        await restore()


async def test_command_line_refuses_missing_inputs(tmp_path: Path) -> None:
    status, _, err = await asyncio.to_thread(_cli, ["--data-dir", str(tmp_path)])
    assert status == 1
    assert "verifier key" in err
    (tmp_path / "log.vkey").write_text(make_signer().vkey + "\n", encoding="ascii")
    status, _, err = await asyncio.to_thread(_cli, ["--data-dir", str(tmp_path)])
    assert status == 1
    assert "no database at" in err
    assert not (tmp_path / "log.db").exists()
