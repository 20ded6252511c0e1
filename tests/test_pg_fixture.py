"""The throwaway PostgreSQL of ``tests/pg.py`` and its fixtures behave as other tests rely on."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import asyncpg
import pytest

from tests import pg
from tests.pg import PgCluster, PgServer, PgUnavailable

pytestmark = pytest.mark.anyio


async def fetch_setting(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SELECT current_setting($1)", name))
    finally:
        await conn.close()


async def test_pg_dsn_reaches_the_etch_database(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == "etch"
        assert await conn.fetchval("SELECT current_user") == "postgres"
        assert await conn.fetchval("SELECT 1 + 1") == 2
    finally:
        await conn.close()


async def test_private_server_settings(pg_server: PgServer) -> None:
    assert pg_server.dsn == f"postgresql://postgres@/etch?host={pg_server.socket_dir}"
    assert await fetch_setting(pg_server.dsn, "fsync") == "on"
    assert await fetch_setting(pg_server.dsn, "synchronous_commit") == "on"
    assert await fetch_setting(pg_server.dsn, "listen_addresses") == ""
    sockets = await fetch_setting(pg_server.dsn, "unix_socket_directories")
    assert sockets == str(pg_server.socket_dir)
    assert int(await fetch_setting(pg_server.dsn, "max_connections")) >= 50
    assert (pg_server.socket_dir / ".s.PGSQL.5432").exists()
    if os.geteuid() == 0:
        assert pg_server.run_as == "postgres"
        assert pg_server.data_dir.stat().st_uid == pwd.getpwnam("postgres").pw_uid


async def test_pg_database_is_fresh_and_distinct(pg_database: str, pg_dsn: str) -> None:
    assert pg_database != pg_dsn
    conn = await asyncpg.connect(pg_database)
    try:
        name = await conn.fetchval("SELECT current_database()")
        assert str(name).startswith("etch_test_")
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
    finally:
        await conn.close()


async def test_create_and_drop_database(pg_cluster: PgCluster) -> None:
    dsn = pg_cluster.create_database("etch_fixture_probe")
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE t (x int)")
    # Dropping closes connections left open (a test that forgot to close its pool).
    pg_cluster.drop_database("etch_fixture_probe")
    assert conn.is_closed() or await _connection_dead(conn)
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(dsn)
    pg_cluster.drop_database("etch_fixture_probe")  # dropping again is harmless


async def _connection_dead(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return True
    return False


def test_database_names_are_checked(pg_cluster: PgCluster) -> None:
    for bad in ('x"; DROP DATABASE etch; --', "Upper", "", "1st", "a" * 64, "a-b"):
        with pytest.raises(ValueError, match="unsafe"):
            pg_cluster.dsn_for(bad)
        with pytest.raises(ValueError, match="unsafe"):
            pg_cluster.create_database(bad)


async def test_stop_and_start(pg_server: PgServer, pg_dsn: str) -> None:
    pg_server.stop()
    try:
        assert not pg_server.is_running()
        with pytest.raises((OSError, asyncpg.CannotConnectNowError)):
            await asyncpg.connect(pg_dsn, timeout=5)
    finally:
        pg_server.start()
    assert pg_server.is_running()
    assert await fetch_setting(pg_dsn, "fsync") == "on"
    pg_server.ensure_running()  # already running: nothing to do
    assert pg_server.is_running()


def test_missing_binaries_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "find_bin_dir", lambda: None)
    with pytest.raises(PgUnavailable, match="binaries"):
        PgServer.create()


def test_find_bin_dir_finds_the_server_tools() -> None:
    found = pg.find_bin_dir()
    if found is None:
        pg.unavailable("no PostgreSQL binaries on this machine")
    for tool in ("initdb", "pg_ctl", "postgres"):
        assert (found / tool).is_file()


def test_unavailable_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no server"):
        pg.unavailable("no server")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no server"):
        pg.unavailable("no server")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no server"):
        pg.unavailable("no server")


def test_failed_start_raises_pg_unavailable(tmp_path: Path) -> None:
    found = pg.find_bin_dir()
    if found is None:
        pg.unavailable("no PostgreSQL binaries on this machine")
    broken = PgServer(found, tmp_path, None)  # no cluster was initialized here
    with pytest.raises(PgUnavailable, match="pg_ctl start exited"):
        broken.start()
