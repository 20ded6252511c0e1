"""``etch serve``: run the log (the same as ``python -m server``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["register"]

EPILOG = """examples:
  etch serve                                   # ./etch-data, SQLite, 127.0.0.1:8080
  etch serve --data-dir /var/lib/etch --origin log.example.com/oauth/2026
  etch serve --database-url 'postgresql://etch@/etch?host=/run/postgresql'
  ETCH_PORT=9000 etch serve --config etch.toml

Settings come from defaults < --config FILE (TOML) < ETCH_* variables < flags.
"""


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand with the server's own flags (see server.config)."""
    from server.config import add_serve_arguments

    parser = subparsers.add_parser(
        "serve",
        help="run the log server",
        description="Run the Etch log: SQLite in ./etch-data and 127.0.0.1:8080 by default.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from server.__main__ import run
    from server.config import ConfigError, settings_from_args

    try:
        settings = settings_from_args(args, os.environ)
    except ConfigError as exc:
        print(f"etch serve: {exc}", file=sys.stderr)
        return 2
    return run(settings)
