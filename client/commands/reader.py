"""``etch reader``: register, list and revoke readers, who may read entry contents.

A log that does not make its entries public (``public_entries``, the default for ``etch
serve``) shows entry contents (``GET /v1/entries/<index>``, ``GET /tile/entries/...``, lookup
results beyond index and hash) only to readers, authenticated with
``Authorization: Bearer <credential>``. Works directly on the log's database, like
``etch submitter``::

    etch reader add auditor          # prints the credential once
    etch reader list
    etch reader revoke auditor

Exit status: 0 done, 1 refused (name taken, unknown name, database trouble), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from client.commands.submitter import (
    add_database_arguments,
    list_command,
    revoke_command,
    run_with_storage,
)

__all__ = ["register"]


def _add(args: argparse.Namespace) -> int:
    from server.principals import new_principal

    now_ms = int(time.time() * 1000)

    async def body(storage: Any) -> int:
        if await storage.get_principal("reader", args.name) is not None:
            print(f"etch reader add: a reader named {args.name} exists", file=sys.stderr)
            return 1
        created = new_principal("reader", args.name, now_ms=now_ms)
        await storage.add_principal(created.principal)
        print(f"reader: {args.name}")
        print(f"credential: {created.credential}")
        print("(shown once: send it as Authorization: Bearer <credential>)")
        return 0

    return run_with_storage(args, "reader add", body)


def register(subparsers: Any) -> None:
    """Add ``etch reader`` with ``add``, ``list`` and ``revoke``."""
    parser = subparsers.add_parser(
        "reader",
        help="register, list and revoke readers of entry contents",
        description="Manage who may read entry contents of a non-public log.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        dest="reader_command", metavar="COMMAND", parser_class=type(parser)
    )
    parser.set_defaults(func=lambda _args: _usage(parser))

    add = commands.add_parser("add", help="register a reader; prints its credential once")
    add.add_argument("name", help="1-64 characters A-Z a-z 0-9 . _ -")
    add_database_arguments(add)
    add.set_defaults(func=_add)

    listing = commands.add_parser("list", help="list readers")
    add_database_arguments(listing)
    listing.set_defaults(func=list_command("reader"))

    revoke = commands.add_parser("revoke", help="revoke a reader")
    revoke.add_argument("name")
    add_database_arguments(revoke)
    revoke.set_defaults(func=revoke_command("reader"))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2
