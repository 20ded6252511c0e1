"""Several logs in one service: temporal shards or one log per tenant, each with its own origin,
key, tree and witness policy (configured as ``[logs.<name>]`` tables, see :mod:`server.config`).

=================================  =============================================================
path                               what
=================================  =============================================================
``GET /logs``                      every log: name, origin, vkey, state, sizes, path, successor
``/logs/<name>/...``               log ``<name>``: everything one log serves (checkpoint, tiles,
                                   JSON API, receipts, OAuth intake, health, OpenAPI)
``/logs/<name>/explorer``          its explorer
``/...``                           the default (top-level) log, as with one log; it is also
                                   ``/logs/default/...``
=================================  =============================================================

A client (``etch verify``, ``etch audit``, :class:`client.logclient.LogClient`) pointed at
``http://host/logs/<name>`` talks to that log alone, exactly as it would to a one-log service.

Separation: each log has its own directory (``<data_dir>/logs/<name>``: ``log.key``,
``log.vkey``, high-water mark and, with SQLite, ``log.db``) and, with PostgreSQL, its own schema
in the service's database (:func:`server.config.postgres_schema`), so entries, tiles,
checkpoints, duplicate detection and principals of two logs never meet. Each log has its own
sequencer and witness collector; a fault in one does not stop the others from serving.

Freezing (:meth:`server.log.LogService.freeze`): a log whose configuration says ``frozen`` (or
whose ``not_after`` has passed, checked at start-up and then timed) is frozen at start-up or at
that instant; the final checkpoint is stored in its storage, so it stays frozen across restarts.

Without ``[logs.<name>]`` tables the service is the one log it always was (:func:`build_single`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from merkle.errors import MerkleError
from merkle.policy import Policy, parse_policy
from server.app import create_app
from server.cluster import build_cluster_service
from server.config import DEFAULT_LOG_NAME, Settings, postgres_schema
from server.highwater import HighWaterMark
from server.ingest import OAuthSettings, create_oauth_app
from server.keys import load_or_create_log_key
from server.log import LogService, Successor
from server.problems import exception_handlers
from server.replica import ReplicaRoutedStorage
from server.storage import PostgresStorage, SQLiteStorage, open_storage
from server.storage.base import StorageError
from server.witnessing import WitnessCollector

__all__ = [
    "HostedLog",
    "LogHost",
    "StartupError",
    "build_app",
    "build_service",
    "load_policy",
    "log_path",
]

log = logging.getLogger(__name__)

_FREEZE_RETRY = 5.0
"""Seconds between attempts to store a final checkpoint when storage fails."""


class StartupError(Exception):
    """The log cannot start as configured; the message says why in one line."""


def log_path(name: str) -> str:
    """Return the URL path of log ``name``, e.g. ``/logs/2026-h1`` (no trailing slash)."""
    return f"/logs/{name}"


def load_policy(settings: Settings, vkey: str) -> Policy | None:
    """Read the witness policy file, checking that it names this log. Raises StartupError."""
    if settings.policy_file is None:
        return None
    try:
        policy = parse_policy(settings.policy_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, MerkleError) as exc:
        raise StartupError(f"policy file {settings.policy_file}: {exc}") from None
    if not any(entry.vkey == vkey for entry in policy.logs):
        raise StartupError(
            f"policy file {settings.policy_file} does not list this log's key {vkey}"
        )
    return policy


def build_service(settings: Settings) -> tuple[LogService, Policy | None]:
    """Return the (unstarted) log service and its witness policy, creating the key if new.

    ``settings`` are one log's (:meth:`server.config.Settings.log_settings`).
    Raises KeyFileError or StartupError.
    """
    key = load_or_create_log_key(settings.data_dir, settings.origin)
    policy = load_policy(settings, key.vkey)
    if settings.clustered:  # several processes around one PostgreSQL (server.cluster)
        witnessed = policy is not None and policy.quorum != "none"
        try:
            return build_cluster_service(settings, key.signer, witnessed=witnessed), policy
        except ValueError as exc:
            raise StartupError(str(exc)) from None
    storage = open_storage(settings.database)
    service = LogService(
        storage,
        key.signer,
        settings.origin,
        batch_size=settings.batch_size,
        batch_period=settings.batch_period_ms / 1000,
        witnessed=policy is not None and policy.quorum != "none",
        high_water=HighWaterMark.in_data_dir(settings.data_dir),
    )
    return service, policy


def build_app(settings: Settings, service: LogService) -> Starlette:
    """Return the app the settings ask for: the OAuth layer (default) or the raw engine.

    The service's lifespan is managed by the caller.
    """
    if settings.intake == "raw":
        return create_app(service, limits=settings.limits, manage_service=False)
    storage = service.storage
    assert isinstance(storage, SQLiteStorage | PostgresStorage | ReplicaRoutedStorage)
    oauth = OAuthSettings(
        public_entries=settings.public_entries,
        public_token_ref_lookup=settings.public_token_ref_lookup,
        submitter_rate=settings.submitter_rate,
        submitter_burst=settings.submitter_burst,
        set_audience=settings.set_audience,
    )
    return create_oauth_app(service, storage, oauth, limits=settings.limits, manage_service=False)


def _rfc3339(instant: datetime.datetime | None) -> str | None:
    """Return ``2026-07-01T00:00:00Z`` for an aware UTC datetime (``None`` stays ``None``)."""
    if instant is None:
        return None
    return instant.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class HostedLog:
    """One log of the service: its settings, service, witness collector and app.

    Build it with its own settings (:meth:`server.config.Settings.log_settings`); ``successor``
    is named in refusals once it is frozen; ``not_after`` freezes it at that instant;
    ``wall`` is the clock (seconds since the epoch) ``not_after`` is compared with.
    Raises KeyFileError or StartupError (building the service).
    """

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        successor: Successor | None = None,
        not_after: datetime.datetime | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.settings = settings
        self.path = log_path(name)
        self.not_after = not_after
        self._wall = wall
        self.service, self.policy = build_service(settings)
        self.service.successor = successor
        self.collector: WitnessCollector | None = None
        self.app = build_app(settings, self.service)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the log, then freeze it if its configuration or ``not_after`` says so.

        A log whose storage holds a final checkpoint starts frozen (``frozen = false`` then
        only brings a warning). Without witnesses, freezing at start-up is done on return;
        with witnesses it goes on in the background until their quorum cosigns the final tree.
        Raises IntegrityFailure and StorageError like :meth:`LogService.start`.
        """
        await self.service.start()
        if self.service.state == "frozen":
            if not self.settings.frozen:
                warning = (
                    f"log {self.name} is frozen (its storage holds its final checkpoint);"
                    " frozen = false does not reopen it"
                )
                self.service.sequencer.warnings.append(warning)
                log.warning("%s", warning)
            return
        if self.policy is not None:
            self.collector = WitnessCollector(self.service, self.policy)
            self.service.collector = self.collector
            await self.collector.start()
        due = self._seconds_to_not_after()
        if self.settings.frozen or (due is not None and due <= 0):
            task = self._spawn(self._freeze(), f"freeze {self.name}")
            if not self.service.witnessed:
                await asyncio.shield(task)
        elif due is not None:
            self._spawn(self._freeze_at(due), f"freeze {self.name} at not_after")

    def _seconds_to_not_after(self) -> float | None:
        if self.not_after is None:
            return None
        return self.not_after.timestamp() - self._wall()

    def _spawn(self, work: Awaitable[None], name: str) -> asyncio.Task[None]:
        async def run() -> None:
            await work

        task = asyncio.create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _freeze_at(self, delay: float) -> None:
        """Sleep until ``not_after`` (re-checking the wall clock), then freeze."""
        while delay > 0:
            await asyncio.sleep(min(delay, 3600.0))
            delay = self._seconds_to_not_after() or 0.0
        log.info("log %s reached its not_after, %s", self.name, _rfc3339(self.not_after))
        await self._freeze()

    async def _freeze(self) -> None:
        """Freeze the log, retrying while its storage fails."""
        while True:
            try:
                final = await self.service.freeze()
            except StorageError as exc:
                log.warning("log %s: storing its final checkpoint failed: %s", self.name, exc)
                await asyncio.sleep(_FREEZE_RETRY)
                continue
            log.info(
                "log %s is frozen; final checkpoint at tree size %d",
                self.name,
                final.checkpoint.tree_size,
            )
            return

    async def stop(self) -> None:
        """Stop freezing tasks, the witness collector and the service."""
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.collector is not None:
            await self.collector.stop()
        await self.service.stop()

    def describe(self) -> dict[str, Any]:
        """Return this log's row of ``GET /logs``."""
        service = self.service
        published = service.published
        successor = service.successor
        final = service.final
        return {
            "name": self.name,
            "origin": service.origin,
            "vkey": service.vkey,
            "state": service.state,
            "path": self.path + "/",
            "tree_size": service.tree_size,
            "published_size": published.checkpoint.tree_size if published else None,
            "final_size": final.checkpoint.tree_size if final else None,
            "successor": successor.name if successor else None,
            "not_after": _rfc3339(self.not_after),
            "default": self.name == DEFAULT_LOG_NAME,
        }


_SCHEMAS_LOCK: Final = 0x4554_4348_0000_0003
"""Advisory lock held while the logs' schemas are created ("ETCH", 3)."""


async def _ensure_schemas(settings: Settings) -> None:
    """Create the PostgreSQL schema of every log whose tables live in the service's database.

    Raises StartupError when the database cannot be reached.
    """
    if not settings.is_postgres:
        return
    wanted = [postgres_schema(log.name) for log in settings.logs if log.database_url is None]
    if not wanted:
        return
    try:
        conn = await asyncpg.connect(settings.database, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StartupError(
            f"cannot reach {settings.database_for_display()} ({type(exc).__name__})"
        ) from None
    try:
        # Under a lock: the processes of a cluster start together, and two concurrent
        # CREATE SCHEMA IF NOT EXISTS of one name may both try to create it.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMAS_LOCK)
            for schema in wanted:  # names are [a-z0-9_] only (server.config.postgres_schema)
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    except asyncpg.PostgresError as exc:
        raise StartupError(f"cannot create schema ({type(exc).__name__})") from None
    finally:
        await conn.close()


class LogHost:
    """Every log of a service (the default one first) and the application that serves them.

    Construction builds each log (keys created when new); :meth:`start` opens and verifies
    them. Raises KeyFileError or StartupError.
    """

    def __init__(self, settings: Settings, *, wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        names = settings.log_names
        origins = {name: settings.log_settings(name).origin for name in names}
        self.logs: dict[str, HostedLog] = {}
        for name in names:
            own = settings.log_settings(name)
            config = settings.log_config(name)
            successor = None
            if own.successor is not None:
                target = own.successor
                successor = Successor(target, origins[target], log_path(target))
            self.logs[name] = HostedLog(
                name,
                own,
                successor=successor,
                not_after=config.not_after if config is not None else None,
                wall=wall,
            )
        self._started: list[HostedLog] = []
        self._apps: dict[bool, Starlette] = {}

    @property
    def default(self) -> HostedLog:
        """The default (top-level) log, also served at ``/``."""
        return self.logs[DEFAULT_LOG_NAME]

    async def start(self) -> None:
        """Create PostgreSQL schemas, then start every log; on failure stop those started.

        Raises StartupError, IntegrityFailure or StorageError (naming the log).
        """
        await _ensure_schemas(self.settings)
        try:
            for hosted in self.logs.values():
                try:
                    await hosted.start()
                except Exception:
                    await hosted.service.stop()
                    raise
                self._started.append(hosted)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every started log (in reverse order)."""
        while self._started:
            await self._started.pop().stop()

    def describe(self) -> dict[str, Any]:
        """Return the body of ``GET /logs``."""
        return {"logs": [hosted.describe() for hosted in self.logs.values()]}

    def create_app(self, *, explorer: bool = True) -> Starlette:
        """Return the service's application (see the module docstring for the paths).

        With ``explorer`` each log gets its explorer (``/explorer`` for the default log as
        with one log, and ``/logs/<name>/explorer``). Calls with the same ``explorer`` return
        the same application.
        """
        made = self._apps.get(explorer)
        if made is not None:
            return made

        async def listing(request: Request) -> Response:
            body = json.dumps(self.describe(), separators=(",", ":"), ensure_ascii=False)
            return Response(
                body.encode("utf-8"),
                media_type="application/json",
                headers={"Cache-Control": "public, max-age=2"},
            )

        routes: list[BaseRoute] = [
            Route("/logs", listing, methods=["GET"]),
            Route("/logs/", listing, methods=["GET"]),
        ]
        if explorer:
            for hosted in self.logs.values():
                routes.extend(_explorer_routes(hosted))
        routes.extend(Mount(hosted.path, app=hosted.app) for hosted in self.logs.values())
        default = self.default
        if explorer and True not in self._apps:
            from server.explorer import install_explorer

            install_explorer(default.app, default.service, default.policy)  # /explorer, as alone
        routes.append(Mount("", app=default.app))
        app = Starlette(routes=routes, exception_handlers=exception_handlers())
        app.state.host = self
        self._apps[explorer] = app
        return app


def _explorer_routes(hosted: HostedLog) -> Iterable[BaseRoute]:
    """Return the explorer routes of one log at ``/logs/<name>/explorer``."""
    from server.explorer.access import ReadRules
    from server.explorer.views import Explorer

    prefix = hosted.path + "/explorer"
    layer = getattr(hosted.app.state, "oauth", None)
    if layer is not None:
        rules = ReadRules(
            public_entries=layer.settings.public_entries,
            public_token_ref_lookup=layer.settings.public_token_ref_lookup,
            lookups=True,
        )
        explorer = Explorer(
            hosted.service,
            policy=hosted.policy,
            rules=rules,
            storage=layer.storage,
            prefix=prefix,
            api_base=hosted.path,
        )
    else:
        rules = ReadRules(public_entries=True, lookups=False)
        explorer = Explorer(
            hosted.service, policy=hosted.policy, rules=rules, prefix=prefix, api_base=hosted.path
        )
    return explorer.routes(root_redirect=False)
