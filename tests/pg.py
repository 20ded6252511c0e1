"""Throwaway PostgreSQL for tests: a private server on a Unix socket, or an external one.

:class:`PgServer` runs ``initdb`` into a fresh temporary directory and serves that cluster with
``pg_ctl`` on a Unix socket in the same directory (no TCP port, so several test sessions never
collide), with ``fsync`` on so durability tests mean something. Tests can stop, start and restart
it (reliability tests restart PostgreSQL while clients submit) and create a fresh database per
test. PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user through
``runuser``. :class:`ExternalPg` wraps a server given by ``ETCH_TEST_DSN`` (no restarts).

The binaries are looked up in ``/usr/lib/postgresql/<version>/bin`` (newest first), then on
``PATH``. Anything that prevents a start raises :class:`PgUnavailable` with the reason and the
end of the server log.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

__all__ = ["ExternalPg", "PgCluster", "PgServer", "PgUnavailable", "find_bin_dir", "unavailable"]

SUPERUSER = "postgres"
"""The cluster's superuser (``initdb -U``), also the OS user the server runs as under root."""

DEFAULT_DATABASE = "etch"
"""The database :meth:`PgServer.create` makes for the session-wide ``pg_dsn``."""

_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_TIMEOUT = 60.0
_MAX_SOCKET_DIR = 80  # a socket path (dir + "/.s.PGSQL.5432") must fit in 107 bytes


class PgUnavailable(Exception):  # noqa: N818 (reads as a condition, like the storage errors)
    """PostgreSQL cannot be started or reached; the message says why."""


def unavailable(reason: str) -> NoReturn:
    """Fail the test under CI (``CI=true``: no PostgreSQL test is ever skipped there), else skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL unavailable: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


def find_bin_dir() -> Path | None:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``."""
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates.sort(key=lambda p: int(p.parent.name), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _check_name(name: str) -> str:
    if _DATABASE_NAME.fullmatch(name) is None:
        raise ValueError(f"unsafe database name {name!r}")
    return name


def _admin_execute(dsn: str, statement: str) -> None:
    """Run one SQL statement on ``dsn`` with its own event loop in a helper thread.

    A thread keeps this usable from sync fixtures whether or not an event loop is running.
    Raises ``PgUnavailable`` if the server cannot be reached, asyncpg errors otherwise.
    """

    async def execute() -> None:
        conn = await asyncpg.connect(dsn, timeout=_TIMEOUT)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(asyncio.run, execute()).result(timeout=_TIMEOUT * 2)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as exc:
            raise PgUnavailable(f"cannot reach PostgreSQL: {type(exc).__name__}: {exc}") from exc


class PgCluster:
    """A PostgreSQL server tests may create databases on.

    ``dsn`` names the default database, ``admin_dsn`` the one databases are created from.
    """

    def __init__(self, dsn: str, admin_dsn: str) -> None:
        self._dsn = dsn
        self._admin_dsn = admin_dsn

    @property
    def dsn(self) -> str:
        """The DSN of the default database (what the ``pg_dsn`` fixture yields)."""
        return self._dsn

    def dsn_for(self, database: str) -> str:
        """Return the DSN of ``database`` on this server (same user, host and options)."""
        parts = urlsplit(self._admin_dsn)
        return urlunsplit(parts._replace(path="/" + quote(_check_name(database))))

    def ensure_running(self) -> None:
        """Make sure the server accepts connections (a test may have left it stopped)."""

    def create_database(self, name: str) -> str:
        """Create the empty database ``name`` and return its DSN. Requires a safe name."""
        _admin_execute(self._admin_dsn, f'CREATE DATABASE "{_check_name(name)}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, closing any connections left open to it."""
        statement = f'DROP DATABASE IF EXISTS "{_check_name(name)}" WITH (FORCE)'
        _admin_execute(self._admin_dsn, statement)


class ExternalPg(PgCluster):
    """A server the tests did not start (``ETCH_TEST_DSN``); it cannot be restarted.

    Its DSN is both the default database and where databases are created (``CREATEDB`` needed).
    """

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, dsn)


class PgServer(PgCluster):
    """A private PostgreSQL cluster in a temporary directory, on a Unix socket there.

    Build one with :meth:`create`; :meth:`destroy` stops it and removes the directory.
    """

    def __init__(self, bin_dir: Path, base_dir: Path, run_as: str | None) -> None:
        self.bin_dir = bin_dir
        self.base_dir = base_dir
        self.run_as = run_as
        super().__init__(self.dsn_in(DEFAULT_DATABASE), self.dsn_in("postgres"))

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's Unix socket (the DSN's ``host``)."""
        return self.base_dir

    @property
    def log_file(self) -> Path:
        """The server log."""
        return self.base_dir / "server.log"

    def dsn_in(self, database: str) -> str:
        """Return ``postgresql://postgres@/<database>?host=<socket dir>``."""
        return f"postgresql://{SUPERUSER}@/{_check_name(database)}?host={quote(str(self.socket_dir))}"

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls) -> PgServer:
        """Initialize, configure and start a new cluster with the database ``etch``.

        Raises ``PgUnavailable`` if the binaries, the ``postgres`` user (when root) or a start
        are missing or fail.
        """
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PgUnavailable("no PostgreSQL binaries in /usr/lib/postgresql/*/bin or on PATH")
        run_as: str | None = None
        parent: str | None = None
        if os.geteuid() == 0:
            run_as = SUPERUSER
            try:
                account = pwd.getpwnam(run_as)
            except KeyError:
                raise PgUnavailable("running as root and there is no 'postgres' user") from None
            if shutil.which("runuser") is None:
                raise PgUnavailable("running as root and 'runuser' is not installed")
            parent = "/tmp"  # the postgres user must be able to reach the directory
        elif len(tempfile.gettempdir()) > _MAX_SOCKET_DIR - 20:
            parent = "/tmp"  # a socket path must stay short
        base = Path(tempfile.mkdtemp(prefix="etch-pg-", dir=parent))
        server = cls(bin_dir, base, run_as)
        try:
            if run_as is not None:
                os.chown(base, account.pw_uid, account.pw_gid)
            server._initdb()
            server.start()
            server.create_database(DEFAULT_DATABASE)
        except BaseException:
            server.destroy()
            raise
        return server

    def _initdb(self) -> None:
        self._tool(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "port": "5432",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "shared_buffers": "'32MB'",
            "max_connections": "100",
            "max_wal_size": "'1GB'",
            "logging_collector": "off",
        }
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# throwaway test server\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """Start the server and wait until it accepts connections. Raises ``PgUnavailable``."""
        data, log, wait = str(self.data_dir), str(self.log_file), str(int(_TIMEOUT))
        self._tool("pg_ctl", "start", "-D", data, "-l", log, "-w", "-t", wait)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: ``smart``, ``fast`` or ``immediate``, a crash)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"bad shutdown mode {mode!r}")
        data, wait = str(self.data_dir), str(int(_TIMEOUT))
        self._tool("pg_ctl", "stop", "-D", data, "-m", mode, "-w", "-t", wait)

    def restart(self, mode: str = "fast") -> None:
        """Stop the server (see :meth:`stop`) and start it again."""
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        """Return whether the server's postmaster is running."""
        status = self._tool("pg_ctl", "status", "-D", str(self.data_dir), check=False)
        return status.returncode == 0

    def ensure_running(self) -> None:
        """Start the server if a test left it stopped."""
        if not self.is_running():
            self.start()

    def destroy(self) -> None:
        """Stop the server (fast, then immediate if that fails) and remove its directory."""
        try:
            if (self.data_dir / "postmaster.pid").exists():
                try:
                    self.stop("fast")
                except PgUnavailable:
                    self.stop("immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- streaming replica -------------------------------------------------------------------

    def create_replica(self) -> PgServer:
        """Start a hot-standby streaming replica of this server and return it.

        ``pg_basebackup -R -X stream`` copies the cluster over a replication connection on the
        primary's socket (``wal_level = replica``, the default, and ``initdb --auth=trust``'s
        ``local replication`` rule allow it) and writes the standby configuration; the copy is
        then served by a second ``pg_ctl`` on a socket in its own directory. Its :attr:`dsn`
        names the replicated ``etch`` database. Call :meth:`destroy` on it after use.
        Raises ``PgUnavailable`` if the copy or the start fails.
        """
        base = Path(tempfile.mkdtemp(prefix="etch-pgr-", dir=self.base_dir.parent))
        replica = PgServer(self.bin_dir, base, self.run_as)
        try:
            if self.run_as is not None:
                account = pwd.getpwnam(self.run_as)
                os.chown(base, account.pw_uid, account.pw_gid)
            replica._tool(
                "pg_basebackup",
                "-D",
                str(replica.data_dir),
                "-R",
                "-X",
                "stream",
                "-h",
                str(self.socket_dir),
                "-p",
                "5432",
                "-U",
                SUPERUSER,
                "--checkpoint=fast",
                "--no-sync",
            )
            with (replica.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
                conf.write(f"\n# replica\nunix_socket_directories = '{replica.socket_dir}'\n")
                conf.write("hot_standby = on\nhot_standby_feedback = on\n")
            replica.start()
        except BaseException:
            replica.destroy()
            raise
        return replica

    # -- helpers ---------------------------------------------------------------------------

    def _tool(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL server tool (as the ``postgres`` user under root)."""
        command: Sequence[str] = [str(self.bin_dir / name), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT * 2,
                cwd=self.base_dir,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PgUnavailable(f"{name} failed: {exc}{self._log_tail()}") from exc
        if check and result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            what = " ".join([name, *args[:1]])
            raise PgUnavailable(f"{what} exited {result.returncode}: {output}{self._log_tail()}")
        return result

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- server log ---\n{tail}" if tail else ""
