"""Entry point of a witness process: ``python -m witness`` (and ``etch witness``).

::

    python -m witness --data-dir DIR --logs FILE [--listen 127.0.0.1:8380] [--name NAME]
        [--peer URL ...] [--database URL] [--poll-interval S]

On first start the witness creates its cosignature key (type 0x04) in ``DIR/witness.key``
(``--name`` is required then); every start prints its vkey on standard output, one line. The
database is ``DIR/witness.sqlite3`` unless ``--database`` names a ``postgresql://`` URL or
another SQLite path. ``--logs`` is a log list (:mod:`witness.config`: Etch TOML or the witness
network's ``logs/v0``).

Every flag has an environment variable, read here and nowhere else; a flag wins over its
variable: ``ETCH_WITNESS_DATA_DIR``, ``ETCH_WITNESS_LOGS``, ``ETCH_WITNESS_LISTEN``,
``ETCH_WITNESS_NAME``, ``ETCH_WITNESS_PEERS`` (comma or space separated),
``ETCH_WITNESS_DATABASE``, ``ETCH_WITNESS_POLL_INTERVAL``, ``ETCH_WITNESS_RATE``,
``ETCH_WITNESS_BURST``, ``ETCH_WITNESS_MAX_BODY_BYTES``, ``ETCH_WITNESS_FETCH_TIMEOUT``,
``ETCH_WITNESS_LOG_LEVEL``.

Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for a usage or configuration error,
1 when the witness cannot start (database unreachable, port taken).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import httpx
import uvicorn

from witness.config import (
    Settings,
    parse_listen,
    parse_log_list,
    peers_unique,
    split_list,
)
from witness.core import Witness
from witness.errors import ConfigError, StorageError
from witness.gossip import Gossip
from witness.http import Components, create_app
from witness.keys import load_or_create_key
from witness.metrics import WitnessMetrics
from witness.storage import open_storage

__all__ = ["build_parser", "main", "settings_from"]

logger = logging.getLogger("witness")

_ENV = "ETCH_WITNESS_"


class _UsageError(Exception):
    """Bad command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser (every option defaults to its environment variable)."""
    parser = _Parser(
        prog="python -m witness",
        description="Run a C2SP tlog-witness with gossip and fork evidence.",
    )
    parser.add_argument("--data-dir", help="directory for the key and the SQLite database")
    parser.add_argument("--logs", help="log list file (Etch TOML or logs/v0)")
    parser.add_argument("--listen", help="HOST:PORT to serve on (default 127.0.0.1:8380)")
    parser.add_argument("--name", help="witness key name; required when the key is created")
    parser.add_argument(
        "--peer", action="append", default=None, help="peer witness base URL (repeatable)"
    )
    parser.add_argument("--database", help="postgresql:// URL or SQLite path")
    parser.add_argument("--poll-interval", help="seconds between gossip rounds (default 60)")
    parser.add_argument("--rate", help="default add-checkpoint requests per second per log")
    parser.add_argument("--burst", help="add-checkpoint burst per log")
    parser.add_argument("--max-body-bytes", help="request body limit in bytes")
    parser.add_argument("--fetch-timeout", help="timeout of log and peer fetches, seconds")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return parser


def _number(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be finite")
    return number


def _integer(value: str, what: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise ConfigError(f"{what} must be a decimal integer, not {value!r}")
    return int(value)


def settings_from(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Build the settings from command-line arguments and environment variables.

    Pure: ``environ`` is passed in (the entry point passes ``os.environ``). Raises ConfigError
    for invalid or missing values, _UsageError for a malformed command line.
    """
    args = build_parser().parse_args(list(argv))

    def pick(flag: str | None, name: str) -> str | None:
        return flag if flag is not None else environ.get(_ENV + name)

    data_dir = pick(args.data_dir, "DATA_DIR")
    logs = pick(args.logs, "LOGS")
    if not data_dir or not logs:
        raise ConfigError("--data-dir and --logs are required")
    values: dict[str, object] = {"data_dir": Path(data_dir), "logs_file": Path(logs)}
    listen = pick(args.listen, "LISTEN")
    if listen:
        values["host"], values["port"] = parse_listen(listen)
    peers = args.peer if args.peer is not None else split_list(environ.get(_ENV + "PEERS", ""))
    values["peers"] = peers_unique(peers)
    for key, flag, name in (("database", args.database, "DATABASE"), ("name", args.name, "NAME")):
        picked = pick(flag, name)
        if picked:
            values[key] = picked
    for key, flag, name in (
        ("poll_interval", args.poll_interval, "POLL_INTERVAL"),
        ("rate_per_second", args.rate, "RATE"),
        ("fetch_timeout", args.fetch_timeout, "FETCH_TIMEOUT"),
    ):
        picked = pick(flag, name)
        if picked:
            values[key] = _number(picked, key.replace("_", " "))
    for key, flag, name in (
        ("rate_burst", args.burst, "BURST"),
        ("max_body_bytes", args.max_body_bytes, "MAX_BODY_BYTES"),
    ):
        picked = pick(flag, name)
        if picked:
            values[key] = _integer(picked, key.replace("_", " "))
    level = pick(args.log_level, "LOG_LEVEL")
    if level:
        if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"unknown log level {level!r}")
        values["log_level"] = level.upper()
    return Settings(**values)  # type: ignore[arg-type]


def _components(
    settings: Settings, logs_text: str, key_name: str | None
) -> tuple[Callable[[], contextlib.AbstractAsyncContextManager[Components]], str]:
    """Parse the log list, load or create the key; return the components factory and vkey."""
    logs = parse_log_list(logs_text)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    signer, created = load_or_create_key(settings.key_path, key_name)
    if created:
        logger.info("created witness key %s", settings.key_path)

    @contextlib.asynccontextmanager
    async def components() -> AsyncIterator[Components]:
        storage = await open_storage(settings.database_url)
        timeout = httpx.Timeout(settings.fetch_timeout)
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        try:
            async with httpx.AsyncClient(
                timeout=timeout, limits=limits, follow_redirects=False
            ) as http:
                witness = Witness(
                    logs=logs,
                    signer=signer,
                    storage=storage,
                    metrics=WitnessMetrics(),
                    rate_per_second=settings.rate_per_second,
                    rate_burst=settings.rate_burst,
                )
                gossip = Gossip(
                    witness,
                    http,
                    peers=settings.peers,
                    poll_interval=settings.poll_interval,
                    fetch_timeout=settings.fetch_timeout,
                )
                run_gossip = bool(settings.peers) or any(log.url for log in logs)
                yield Components(witness, gossip, settings.max_body_bytes, run_gossip)
        finally:
            await storage.close()

    return components, signer.vkey


def main(argv: Sequence[str] | None = None) -> int:
    """Run the witness until SIGINT/SIGTERM; return the exit status (see module docstring)."""
    try:
        settings = settings_from(sys.argv[1:] if argv is None else argv, os.environ)
    except _UsageError as exc:
        build_parser().print_usage(sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        logs_text = settings.logs_file.read_text("utf-8")
        components, vkey = _components(settings, logs_text, settings.name)
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(vkey, flush=True)
    logger.info("witness %s serving on %s:%d", vkey.split("+", 1)[0], settings.host, settings.port)
    config = uvicorn.Config(
        create_app(components),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again with the
    # handlers it found: these no-op handlers turn that into a normal return (exit status 0).
    for handled in (signal.SIGINT, signal.SIGTERM):
        signal.signal(handled, lambda number, frame: None)
    try:
        server.run()
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if server.started else 1
