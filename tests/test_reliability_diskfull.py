"""Disk full under load: the database's file system fills up, then space comes back.

The database lives on a small ``tmpfs`` the test mounts (root only; elsewhere the test is
skipped, and under CI it fails instead): the SQLite data directory of a real ``python -m
server``, or the data directory of a second, throwaway PostgreSQL cluster (``initdb`` there as
the ``postgres`` user, with :class:`tests.pg.PgServer`). After some acknowledged load a ballast
file takes every byte left, and clients keep submitting. Required, and checked:

* submissions are refused with 503, RFC 9457 ``urn:etch:error:unavailable`` and a positive
  ``Retry-After``; nothing refused is acknowledged, nothing acknowledged is lost;
* reads go on: ``/checkpoint`` (the last checkpoint), tiles, entry bundles, inclusion and
  consistency proofs;
* once the ballast is deleted the same process takes submissions again, without a restart;
* at the end every acknowledged event is in the log at its index with a valid inclusion proof
  against the final checkpoint, every checkpoint shown is consistent with it, and ``server.fsck``
  finds nothing.

PostgreSQL: extending a table or index on a full disk fails the transaction (SQLSTATE 53100,
``could not extend file``) and the server stays up, which is what these runs see; if it ever
PANICs instead (a new WAL segment that cannot be created), the test restarts it after freeing
the space, as an operator would, and the log must again recover without a restart of its own.
Which of the two happened is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from server.fsck import fsck
from server.storage import open_storage
from tests.pg import SUPERUSER, PgServer, PgUnavailable, find_bin_dir, unavailable
from tests.server_helpers import LogProcess
from tests.server_helpers import open_note as open_log_note
from tests.test_reliability_syscalls import Seen, check_refused, seen_for, submit, verify_log

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

BATCH = 50


def require_root() -> None:
    """Mounting a tmpfs needs root: skip elsewhere, but fail under CI (it must run there)."""
    if os.geteuid() == 0:
        return
    reason = "mounting a tmpfs needs root"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def tmpfs(where: Path, size_mb: int) -> Iterator[Path]:
    """Mount a ``size_mb`` MiB tmpfs on ``where`` (created) for the block; unmount afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(where)],
        check=True,
        capture_output=True,
    )
    try:
        yield where
    finally:
        result = subprocess.run(["umount", str(where)], check=False, capture_output=True)
        if result.returncode != 0:  # a process we killed may still hold a file for a moment
            time.sleep(1)
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full (ENOSPC); return the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as ballast:
        for chunk in (1 << 20, 1 << 12, 1 << 9):
            block = b"\xa5" * chunk
            while True:
                try:
                    written += ballast.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


async def submit_batch(
    api: httpx.AsyncClient, seen: Seen, events: list[dict[str, Any]]
) -> str | None:
    """POST a batch: ``None`` if it was logged (every result verified), else the ``detail``
    of its 503 refusal."""
    response = await api.post("/v1/events/batch", json=events)
    if response.status_code != 200:
        check_refused(response)
        seen.refused += events
        return str(response.json().get("detail"))
    for sent, body in zip(events, response.json()["results"], strict=True):
        seen.accept(sent, body)
    return None


async def load_until_refused(api: httpx.AsyncClient, seen: Seen, tag: str) -> tuple[int, str]:
    """Submit batches until one is refused; return how many were logged before it and why."""
    for number in range(400):
        events = [{"t": tag, "b": number, "n": n} for n in range(BATCH)]
        detail = await submit_batch(api, seen, events)
        if detail is not None:
            return number, detail
    raise AssertionError("the disk is full, yet 400 batches were logged")


async def wait_until_accepted(api: httpx.AsyncClient, seen: Seen, within: float) -> int:
    """Submit one new event every 0.2 s until it is logged; return how many were refused."""
    deadline = time.monotonic() + within
    refused = 0
    while time.monotonic() < deadline:
        sent = {"t": "resume", "n": refused}
        response = await submit(api, seen, sent)
        if response.status_code == 201:
            return refused
        check_refused(response)
        refused += 1
        await asyncio.sleep(0.2)
    raise AssertionError(f"submissions still refused {within} s after space was freed")


async def reads_while_down(api: httpx.AsyncClient, seen: Seen) -> dict[str, int]:
    """With the database down: the last checkpoint is still served from memory; tiles and
    proofs are served from the tile cache or refused with 503 + Retry-After. Returns the
    status of each read."""
    response = await api.get("/checkpoint")
    assert response.status_code == 200, response.text
    newest = max(seen.checkpoints)
    assert open_log_note(response.content, seen.verifier) == seen.checkpoints[newest]
    statuses = {"checkpoint": 200}
    index, _ = next(iter(seen.acknowledged.values()))
    for name, path in [
        ("tile", "/tile/0/000" if newest >= 256 else f"/tile/0/000.p/{newest}"),
        ("inclusion", f"/v1/proof/inclusion?index={index}&tree_size={newest}"),
        ("consistency", f"/v1/proof/consistency?first=1&second={newest}"),
    ]:
        response = await api.get(path)
        if response.status_code != 200:
            check_refused(response)
        statuses[name] = response.status_code
    return statuses


async def full_disk_round(
    log: LogProcess,
    ballast: Path,
    *,
    filled: Callable[[], Awaitable[None]] | None = None,
    down: Callable[[], bool] = lambda: False,
    freed: Callable[[], None] | None = None,
    restart_while_full: bool = False,
) -> tuple[Seen, dict[str, Any]]:
    """Load, fill the disk, check refusals and reads, free the space, check the log resumes.

    ``filled`` is awaited right after the disk is full, ``down`` says whether the database
    is down (then reads are checked with :func:`reads_while_down`), ``freed`` is called after
    the ballast is deleted, before submitting again. With ``restart_while_full`` the log is
    killed while the disk is full and started again: it must start, serve every read and
    refuse submissions the same way. Returns what the clients saw and figures for the report.
    """
    seen = seen_for(log)
    pid = log.pid
    figures: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=log.base_url, timeout=30) as api:
        for number in range(6):
            events = [{"t": "before", "b": number, "n": n} for n in range(BATCH)]
            assert await submit_batch(api, seen, events) is None
        figures["ballast_bytes"] = fill(ballast)
        if filled is not None:
            await filled()
        logged, detail = await load_until_refused(api, seen, "full")
        figures["batches_after_fill"], figures["refusal"] = logged, detail
        if not down():
            assert "the disk is full" in detail, detail
        for n in range(3):  # still full: single submissions are refused the same way
            sent = {"t": "full-single", "n": n}
            response = await submit(api, seen, sent)
            if response.status_code != 201:
                check_refused(response)
                seen.refused.append(sent)
        # Reads go on: the last checkpoint, every tile, proofs of every acknowledged event.
        figures["database_down"] = down()
        if figures["database_down"]:
            figures["reads_while_down"] = await reads_while_down(api, seen)
        else:
            await verify_log(api, seen)
        health = await api.get("/healthz")
        figures["healthz_while_full"] = health.status_code
        if restart_while_full:
            log.kill()
            await log.start()
            pid = log.pid
            api.base_url = httpx.URL(log.base_url)
            await verify_log(api, seen)
            sent = {"t": "full-restarted"}
            check_refused(await submit(api, seen, sent))
            seen.refused.append(sent)
        os.unlink(ballast)
        if freed is not None:
            freed()
        started = time.monotonic()
        figures["refused_after_free"] = await wait_until_accepted(api, seen, 30.0)
        figures["resumed_after_s"] = round(time.monotonic() - started, 2)
        assert log.pid == pid, "the log was restarted"
        assert log.is_running()
        refused, seen.refused = seen.refused, []
        for start in range(0, len(refused), BATCH):
            assert await submit_batch(api, seen, refused[start : start + BATCH]) is None
        await verify_log(api, seen)
    log.terminate()
    return seen, figures


async def check_fsck(url: str, seen: Seen) -> None:
    storage = open_storage(url)
    await storage.open()
    try:
        report = await fsck(storage, seen.verifier)
    finally:
        await storage.close()
    assert report.ok, report.problems
    assert report.tree_size == len(seen.acknowledged)


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted-while-full"])
async def test_sqlite_disk_full(tmp_path: Path, restart: bool) -> None:
    require_root()
    with tmpfs(tmp_path / "mnt", 24) as mount:
        log = LogProcess(mount / "data", batch_period_ms=2)
        try:
            await log.start()
            seen, figures = await full_disk_round(
                log, mount / "ballast", restart_while_full=restart
            )
        finally:
            log.kill()
        print(f"SQLite disk full: {figures}")
        await check_fsck(str(mount / "data" / "log.db"), seen)


def pg_on(mount: Path) -> PgServer:
    """Initialize and start a throwaway PostgreSQL cluster whose data lives on ``mount``."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        unavailable("no PostgreSQL binaries in /usr/lib/postgresql/*/bin or on PATH")
    try:
        account = pwd.getpwnam(SUPERUSER)
    except KeyError:
        unavailable("running as root and there is no 'postgres' user")
    os.chown(mount, account.pw_uid, account.pw_gid)
    server = PgServer(bin_dir, mount, SUPERUSER)
    try:
        server._initdb()  # the session fixture's settings (fsync on), on this mount
        server.start()
        server.create_database("etch")
    except PgUnavailable as exc:
        server.destroy()
        unavailable(str(exc))
    return server


@pytest.mark.parametrize("wal", ["current-segment", "new-segment"])
async def test_postgres_disk_full(tmp_path: Path, wal: str) -> None:
    """``current-segment``: the disk fills while WAL still fits in its segment: inserts fail
    (53100) and PostgreSQL stays up. ``new-segment``: a WAL switch right after the disk is full
    makes PostgreSQL create a segment it cannot write, so it PANICs and stays down until the
    test restarts it (after freeing the space)."""
    require_root()
    # The socket path must stay short and the postgres user must reach the directory.
    where = Path(tempfile.mkdtemp(prefix="etch-pgfull-", dir="/tmp"))
    try:
        with tmpfs(where, 96) as mount:
            server = pg_on(mount)
            panicked: list[bool] = []

            def restart_if_down() -> None:
                down = not server.is_running()
                panicked.append(down)
                if down:
                    server.start()

            log = LogProcess(tmp_path / "data", database_url=server.dsn, batch_period_ms=2)
            try:
                await log.start()

                async def switch_wal() -> None:
                    connection = await asyncpg.connect(server.dsn)
                    try:
                        await connection.execute("SELECT pg_switch_wal()")
                    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                        pass  # PostgreSQL may PANIC already on the switch
                    finally:
                        with contextlib.suppress(Exception):
                            await connection.close()

                seen, figures = await full_disk_round(
                    log,
                    mount / "ballast",
                    filled=switch_wal if wal == "new-segment" else None,
                    down=lambda: not server.is_running(),
                    freed=restart_if_down,
                )
                await check_fsck(server.dsn, seen)
            finally:
                log.kill()
                server.destroy()
            figures["postgres_panicked"] = panicked == [True]
            print(f"PostgreSQL disk full ({wal}): {figures}")
            assert figures["database_down"] == figures["postgres_panicked"]
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(where)
