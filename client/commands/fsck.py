"""``etch fsck``: check a log's own database offline and name every damaged record.

Reads the database of a stopped (or running: it only reads) log: SQLite ``<data-dir>/log.db`` by
default, or ``--database-url``. The log's verifier key comes from ``<data-dir>/log.vkey`` or
``--vkey-file``. Every entry is re-hashed, every tile recomputed from the level below, every
stored checkpoint checked for the log's signature and against the tree (see
:mod:`server.fsck`). Prints one line per problem, ``LOCATION: what is wrong``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from client.commands._common import EXIT_FAILED, EXIT_OK, add_output_argument, emit_json

__all__ = ["register"]

EPILOG = """examples:
  etch fsck --data-dir /var/lib/etch
  etch fsck --database-url 'postgresql://etch@/etch?host=/run/postgresql' --vkey-file log.vkey

exit status: 0 the database is sound, 1 a problem was found (or it cannot be read), 2 usage
"""


def register(subparsers: Any) -> None:
    """Add the ``fsck`` subcommand."""
    parser = subparsers.add_parser(
        "fsck",
        help="check a log's database offline (entries, tiles, checkpoints)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir", default="etch-data", metavar="DIR", help="the log's data directory"
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="postgresql:// URL or SQLite file (default DIR/log.db)",
    )
    parser.add_argument(
        "--vkey-file", metavar="FILE", help="the log's verifier key (default DIR/log.vkey)"
    )
    add_output_argument(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from merkle.errors import MerkleError
    from merkle.note import parse_verifier
    from server.fsck import fsck
    from server.storage import open_storage
    from server.storage.base import StorageError

    data_dir = Path(args.data_dir)
    vkey_path = Path(args.vkey_file) if args.vkey_file else data_dir / "log.vkey"
    database = args.database_url or str(data_dir / "log.db")
    try:
        verifier = parse_verifier(vkey_path.read_text(encoding="ascii").strip())
    except (OSError, UnicodeDecodeError, MerkleError) as exc:
        return _fail(args.json, f"cannot read the log's verifier key {vkey_path}: {exc}")
    if "://" not in database and not Path(database).is_file():
        return _fail(args.json, f"no database at {database}")

    async def check() -> Any:
        storage = open_storage(database)
        await storage.open()
        try:
            return await fsck(storage, verifier)
        finally:
            await storage.close()

    try:
        report = asyncio.run(check())
    except StorageError as exc:
        return _fail(args.json, f"cannot read the database: {exc}")
    if args.json:
        emit_json(
            {
                "ok": report.ok,
                "tree_size": report.tree_size,
                "entries": report.entries,
                "tiles": report.tiles,
                "checkpoints": report.checkpoints,
                "problems": [
                    {"location": p.location, "message": p.message} for p in report.problems
                ],
            }
        )
    else:
        for problem in report.problems:
            print(f"{problem.location}: {problem.message}")
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        print(
            f"etch fsck: {verdict}: tree size {report.tree_size}, {report.entries} entries, "
            f"{report.tiles} tiles, {report.checkpoints} checkpoints checked",
            file=sys.stdout if report.ok else sys.stderr,
        )
    return EXIT_OK if report.ok else EXIT_FAILED


def _fail(as_json: bool, message: str) -> int:
    if as_json:
        emit_json({"ok": False, "error": message})
    else:
        print(f"etch fsck: {message}", file=sys.stderr)
    return EXIT_FAILED
