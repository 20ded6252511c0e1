"""``python -m server`` / ``etch serve``: run the log on uvicorn.

With no arguments: data in ``./etch-data``, SQLite, the log's key created on first start,
listening on 127.0.0.1:8080, with the OAuth layer (:mod:`server.ingest`; ``--intake raw`` runs
the bare engine instead). Exit status 0 after a clean shutdown, 1 when the log refuses to
start (its stored state does not verify, its key does not match), 2 for a usage error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette

from merkle.errors import MerkleError
from merkle.policy import Policy, parse_policy
from server.app import create_app
from server.cluster import build_cluster_service
from server.config import ConfigError, Settings, load_settings
from server.explorer import install_explorer
from server.highwater import HighWaterMark
from server.ingest import OAuthSettings, create_oauth_app
from server.keys import KeyFileError, load_or_create_log_key
from server.log import LogService
from server.replica import ReplicaRoutedStorage
from server.sequencer import IntegrityFailure
from server.storage import PostgresStorage, SQLiteStorage, open_storage
from server.storage.base import StorageError
from server.witnessing import WitnessCollector
from server.workers import serve_workers

__all__ = ["build_app", "build_service", "main", "run", "serve"]

log = logging.getLogger("etch.serve")


class StartupError(Exception):
    """The log cannot start as configured; the message says why in one line."""


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


async def serve(
    settings: Settings, *, ready: asyncio.Event | None = None, sock: socket.socket | None = None
) -> int:
    """Start the log, serve HTTP until stopped, and return the exit status.

    ``sock`` is a listening socket to accept on instead of binding ``host:port`` (workers).
    """
    try:
        service, policy = build_service(settings)
    except (KeyFileError, StartupError) as exc:
        print(f"etch serve: {exc}", file=sys.stderr)
        return 1
    try:
        await service.start()
    except IntegrityFailure as exc:
        print(
            f"etch serve: refusing to start, the stored log does not verify: {exc}", file=sys.stderr
        )
        return 1
    except StorageError as exc:
        print(f"etch serve: cannot open {settings.database_for_display()}: {exc}", file=sys.stderr)
        return 1
    collector = None
    if policy is not None:
        collector = WitnessCollector(service, policy)
        service.collector = collector
        await collector.start()
    app = build_app(settings, service)
    install_explorer(app, service, policy)  # GET /explorer (and / redirects there)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"etch: log {settings.origin} at {base}\n"
        f"      vkey {service.vkey}\n"
        f"      data {settings.data_dir} ({settings.database_for_display()})\n"
        f"      tree size {service.tree_size}; checkpoint {base}/checkpoint",
        flush=True,
    )
    try:
        await server.serve(sockets=None if sock is None else [sock])
    finally:
        if collector is not None:
            await collector.stop()
        await service.stop()
    return 0


def run(settings: Settings) -> int:
    """Configure logging, run the log until it stops, and return the exit status."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per witness request is noise at info level; failures are logged by Etch itself.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
    if settings.workers > 1:  # N cluster processes on one socket (server.workers)
        return serve_workers(settings, serve)
    return asyncio.run(serve(settings))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse settings from ``argv`` and the environment, then serve."""
    try:
        settings = load_settings(list(sys.argv[1:] if argv is None else argv), os.environ)
    except ConfigError as exc:
        print(f"etch serve: {exc}", file=sys.stderr)
        return 2
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
