"""Serve the log engine with its raw-map intake (no OAuth layer), for the server benchmarks.

Run from the project root::

    .venv/bin/python -m benchmarks.serve_raw --data-dir DIR --port PORT
        [--database-url postgresql://...] [--batch-size N] [--batch-period-ms MS]

It takes exactly the flags, ``ETCH_*`` variables and TOML file of ``python -m server``
(:func:`server.config.load_settings`), builds the :class:`server.log.LogService` the same way
(with the high-water mark file of the data directory, flushed after every commit),
serves ``server.app.create_app(service)`` with the engine's default intake (any bounded JSON or
CBOR map is logged as its deterministic CBOR encoding, no submitter authentication) and runs
uvicorn with the same options and garbage-collector settings (:func:`server.runtime.tune_gc`)
as :mod:`server.__main__`. Benchmark figures therefore measure the
engine (decoding, sequencing, storage, proofs) whatever authentication layer the production
entry point adds. No witness policy is applied: every commit is published at once.

Once it listens it prints one line ``ready <url> <vkey>`` to standard output (the orchestrator
waits for it). Exit status 0 after a clean shutdown (SIGINT or SIGTERM), 1 when the log refuses
to start, 2 for a usage error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence

import uvicorn

from server.app import create_app
from server.config import ConfigError, Settings, load_settings
from server.highwater import HighWaterMark
from server.keys import KeyFileError, load_or_create_log_key
from server.log import LogService
from server.runtime import tune_gc
from server.sequencer import IntegrityFailure
from server.storage import open_storage
from server.storage.base import StorageError

__all__ = ["build_raw_service", "main", "serve_raw"]


def build_raw_service(settings: Settings) -> LogService:
    """Return the unstarted log service for ``settings``, creating the log key on first start.

    Raises KeyFileError when the key files cannot be read, written or do not match the origin.
    """
    key = load_or_create_log_key(settings.data_dir, settings.origin)
    return LogService(
        open_storage(settings.database),
        key.signer,
        settings.origin,
        batch_size=settings.batch_size,
        batch_period=settings.batch_period_ms / 1000,
        high_water=HighWaterMark.in_data_dir(settings.data_dir),
    )


class _Server(uvicorn.Server):
    """A uvicorn server that prints ``ready <url> <vkey>`` once its socket listens.

    The URL carries the port actually bound, so ``--port 0`` (any free port) works.
    """

    def __init__(self, config: uvicorn.Config, vkey: str) -> None:
        super().__init__(config)
        self._vkey = vkey

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then print the ready line."""
        await super().startup(sockets=sockets)
        if self.started and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"ready http://{host}:{port} {self._vkey}", flush=True)


async def serve_raw(settings: Settings) -> int:
    """Start the raw-map log for ``settings``, serve until stopped, and return the exit status."""
    try:
        service = build_raw_service(settings)
    except KeyFileError as exc:
        print(f"serve_raw: {exc}", file=sys.stderr)
        return 1
    try:
        await service.start()
    except (IntegrityFailure, StorageError) as exc:
        print(f"serve_raw: the log cannot start: {exc}", file=sys.stderr)
        return 1
    tune_gc()  # as server.__main__ does once the log has started
    app = create_app(service, limits=settings.limits, manage_service=False)
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
    server = _Server(config, service.vkey)
    try:
        await server.serve()
    finally:
        await service.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse the serve flags and environment, then serve the raw-map app."""
    try:
        settings = load_settings(list(sys.argv[1:] if argv is None else argv), os.environ)
    except ConfigError as exc:
        print(f"serve_raw: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve_raw(settings))


if __name__ == "__main__":
    sys.exit(main())
