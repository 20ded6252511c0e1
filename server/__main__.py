"""``python -m server`` / ``etch serve``: run the log on uvicorn.

With no arguments: data in ``./etch-data``, SQLite, the log's key created on first start,
listening on 127.0.0.1:8080, with the OAuth layer (:mod:`server.ingest`; ``--intake raw`` runs
the bare engine instead). Exit status 0 after a clean shutdown, 1 when the log refuses to
start (its stored state does not verify, its key does not match), 2 for a usage error.

With ``[logs.<name>]`` tables in the configuration it serves several logs
(:mod:`server.multilog`): the default one at ``/`` and each at ``/logs/<name>/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence

import uvicorn

from server.config import DEFAULT_LOG_NAME, ConfigError, Settings, load_settings
from server.explorer import install_explorer
from server.keys import KeyFileError
from server.multilog import HostedLog, LogHost, StartupError, build_app, build_service, load_policy
from server.runtime import tune_gc
from server.sequencer import IntegrityFailure
from server.storage.base import StorageError
from server.workers import serve_workers

__all__ = ["build_app", "build_service", "load_policy", "main", "run", "serve"]

log = logging.getLogger("etch.serve")


async def _start(start: Callable[[], Awaitable[None]], settings: Settings) -> int:
    """Run ``start`` and return 0, or print why the log(s) cannot start and return 1."""
    try:
        await start()
    except IntegrityFailure as exc:
        print(
            f"etch serve: refusing to start, the stored log does not verify: {exc}", file=sys.stderr
        )
        return 1
    except StartupError as exc:
        print(f"etch serve: {exc}", file=sys.stderr)
        return 1
    except StorageError as exc:
        print(f"etch serve: cannot open {settings.database_for_display()}: {exc}", file=sys.stderr)
        return 1
    return 0


def _banner(settings: Settings, hosts: list[HostedLog], base: str) -> str:
    """Return the start-up lines: each log's origin, state, vkey, data and checkpoint URL."""
    lines = []
    for hosted in hosts:
        service = hosted.service
        where = base if len(hosts) == 1 else f"{base}{hosted.path}"
        state = "" if service.state == "active" else f" ({service.state})"
        lines.append(
            f"etch: log {service.origin} at {where}{state}\n"
            f"      vkey {service.vkey}\n"
            f"      data {hosted.settings.data_dir} ({hosted.settings.database_for_display()})\n"
            f"      tree size {service.tree_size}; checkpoint {where}/checkpoint"
        )
    if len(hosts) > 1:
        lines.append(f"etch: {len(hosts)} logs, listed at {base}/logs; {base}/ is the default log")
    return "\n".join(lines)


async def serve(
    settings: Settings, *, ready: asyncio.Event | None = None, sock: socket.socket | None = None
) -> int:
    """Start the log (or every log of ``[logs.<name>]``), serve HTTP until stopped, and return
    the exit status.

    ``sock`` is a listening socket to accept on instead of binding ``host:port`` (workers).
    """
    try:
        if settings.logs:
            host = LogHost(settings)
            hosts = list(host.logs.values())
            starter, stopper = host.start, host.stop
        else:
            single = HostedLog(DEFAULT_LOG_NAME, settings)
            hosts = [single]
            starter, stopper = single.start, single.stop
    except (KeyFileError, StartupError) as exc:
        print(f"etch serve: {exc}", file=sys.stderr)
        return 1
    status = await _start(starter, settings)
    if status:
        return status
    tune_gc()  # start-up is over: its objects leave the collector's sight (server.runtime)
    if settings.logs:
        app = host.create_app()
    else:
        app = single.app
        install_explorer(app, single.service, single.policy)  # GET /explorer (/ redirects)
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
    # The banner is for people; stdout on a full disk must not keep the log from serving.
    with contextlib.suppress(OSError):
        print(_banner(settings, hosts, f"http://{settings.host}:{settings.port}"), flush=True)
    try:
        await server.serve(sockets=None if sock is None else [sock])
    finally:
        await stopper()
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
