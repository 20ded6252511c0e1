"""The ``etch`` command line: parse, call the library, print.

Each subcommand lives in its own module under :mod:`client.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning the exit status. Exit status: 0 ok, 1 verification failed (or the
operation failed), 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES = (
    "client.commands.serve",
    "client.commands.submitter",
    "client.commands.reader",
    "client.commands.witness",
    "client.commands.keygen",
    "client.commands.submit",
    "client.commands.checkpoint",
    "client.commands.lookup",
    "client.commands.receipt",
    "client.commands.verify",
    "client.commands.monitor",
    "client.commands.audit",
    "client.commands.evidence",
    "client.commands.fsck",
)
"""The modules that define ``etch`` subcommands, in the order ``etch --help`` lists them."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``etch`` parser with every subcommand registered."""
    parser = _Parser(
        prog="etch",
        description="Etch: a transparency log for OAuth 2.0 audit events.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``etch`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return cast(Callable[[argparse.Namespace], int], func)(args)


if __name__ == "__main__":
    sys.exit(main())
