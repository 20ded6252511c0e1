"""``etch receipt``: write a C2SP tlog-proof receipt for an entry, or for every event of a token.

The receipt is built by the client from data it verified: the checkpoint (log signature,
witness quorum, consistency with the trusted state), the entry read from the log's bundles and
the inclusion proof built from tiles. The entry goes in the receipt's ``extra`` line (unless
``--no-entry``), so ``etch verify FILE --policy POLICY`` needs nothing else, offline.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from client.commands._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_log_arguments,
    checkpoint_json,
    cosigner_text,
    emit_json,
    run_client_command,
)
from client.commands.lookup import add_token_arguments, read_token
from client.errors import ConfigurationError
from client.logclient import LogClient, VerifiedEntry, atomic_write

__all__ = ["register"]

EPILOG = """examples:
  etch receipt --index 42 -o 42.tlog-proof
  etch receipt --token-file token.txt -o receipts/       # one file per event of the token
  etch receipt --token-stdin -o receipts/ < token.txt
  etch verify 42.tlog-proof --policy policy.txt          # later, anywhere, offline

exit status: 0 written, 1 verification failed or log unreachable, 2 usage
"""


def register(subparsers: Any) -> None:
    """Add the ``receipt`` subcommand."""
    parser = subparsers.add_parser(
        "receipt",
        help="write verified tlog-proof receipts for an index or a token",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--index", type=_index, metavar="N", help="the entry's index")
    add_token_arguments(parser, group)
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help="receipt file (--index) or directory (a token: <index>.tlog-proof each)",
    )
    parser.add_argument(
        "--no-entry", action="store_true", help="leave the entry out of the receipt's extra line"
    )
    parser.add_argument("--force", action="store_true", help="replace existing files")
    add_log_arguments(parser)
    parser.set_defaults(func=_run)


def _index(text: str) -> int:
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise argparse.ArgumentTypeError("an index is a canonical decimal number")
    return int(text)


def _write(path: Path, data: bytes, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigurationError(f"{path} exists (use --force to replace it)")
    atomic_write(path, data, 0o644)


def _run(args: argparse.Namespace) -> int:
    try:
        token = read_token(args)
    except ConfigurationError as exc:
        print(f"etch receipt: {exc}", file=sys.stderr)
        return EXIT_USAGE
    output = Path(args.output)

    async def body(client: LogClient) -> int:
        checkpoint = await client.current()
        entries: list[VerifiedEntry]
        pending: list[int] = []
        if token is None:
            entries = [await client.entry(args.index, checkpoint)]
            paths = [output]
        else:
            entries, pending = await client.events_for_token(token, checkpoint)
            os.makedirs(output, exist_ok=True)
            paths = [output / f"{e.index}.tlog-proof" for e in entries]
        for entry, path in zip(entries, paths, strict=True):
            _write(path, entry.receipt(include_entry=not args.no_entry), args.force)
        if args.json:
            emit_json(
                {
                    "ok": True,
                    "checkpoint": checkpoint_json(checkpoint),
                    "receipts": [
                        {"index": e.index, "file": str(p)}
                        for e, p in zip(entries, paths, strict=True)
                    ],
                    "pending": pending,
                }
            )
        else:
            for entry, path in zip(entries, paths, strict=True):
                print(f"wrote {path}: entry {entry.index}")
            print(
                f"verified against {checkpoint.origin} at size {checkpoint.tree_size}, cosigned "
                f"by {cosigner_text(checkpoint, client.policy)}"
            )
            if token is not None and not entries:
                print("no event of this token is covered by the checkpoint yet")
            if pending:
                print(f"pending (not yet covered by a checkpoint): {pending[:10]}")
        return EXIT_OK if entries or token is None else EXIT_FAILED

    return run_client_command("receipt", args, body)
