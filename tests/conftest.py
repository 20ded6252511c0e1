"""Shared pytest configuration: where the shared test data lives, the anyio backend, PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import ExternalPg, PgCluster, PgServer, PgUnavailable, unavailable

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
VECTORS = SHARED / "testdata" / "merkle-vectors"


@pytest.fixture(scope="session")
def merkle_vectors() -> Path:
    """The RFC 6962 probe vectors; a missing folder fails the suite, never skips it."""
    if not VECTORS.is_dir():
        pytest.fail(f"test vectors missing: {VECTORS} (expected ../shared beside the checkout)")
    return VECTORS


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio (asyncpg needs it)."""
    return "asyncio"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's PostgreSQL: ``ETCH_TEST_DSN`` if set, else a private :class:`PgServer`."""
    external = os.environ.get("ETCH_TEST_DSN")
    if external:
        yield ExternalPg(external)
        return
    try:
        server = PgServer.create()
    except PgUnavailable as exc:
        unavailable(str(exc))
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg_dsn(pg_cluster: PgCluster) -> str:
    """DSN of the session's database ``etch`` (shared by every test that uses it)."""
    pg_cluster.ensure_running()
    return pg_cluster.dsn


@pytest.fixture(scope="session")
def pg_server(pg_cluster: PgCluster) -> PgServer:
    """The private server, for tests that stop or restart PostgreSQL (not with ETCH_TEST_DSN)."""
    if not isinstance(pg_cluster, PgServer):
        unavailable("ETCH_TEST_DSN names an external server, which tests cannot restart")
    return pg_cluster


@pytest.fixture
def pg_database(pg_cluster: PgCluster) -> Iterator[str]:
    """DSN of a fresh, uniquely named empty database, dropped after the test."""
    pg_cluster.ensure_running()
    name = f"etch_test_{uuid.uuid4().hex[:16]}"
    try:
        dsn = pg_cluster.create_database(name)
    except PgUnavailable as exc:
        unavailable(str(exc))
    try:
        yield dsn
    finally:
        pg_cluster.ensure_running()
        pg_cluster.drop_database(name)
