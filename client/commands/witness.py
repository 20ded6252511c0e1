"""``etch witness``: run a C2SP witness (the same as ``python -m witness``; see witness.run)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]

EPILOG = """examples:
  etch witness --help                              # the witness's own options
  etch witness --name witness.example.com/w1 --data-dir /var/lib/etch-witness --logs logs.toml

Every argument after "witness" is passed to the witness unchanged.
"""


def register(subparsers: Any) -> None:
    """Add the ``witness`` subcommand, which hands its arguments to :func:`witness.main`."""
    parser = subparsers.add_parser(
        "witness",
        help="run a witness (cosigns checkpoints of the logs it follows)",
        description="Run an Etch witness: a C2SP tlog-witness service.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        prefix_chars="\x00",
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import witness

    return witness.main(list(args.arguments))
