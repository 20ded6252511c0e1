"""``etch verify``: check a C2SP tlog-proof receipt offline against a tlog-policy.

Checks the checkpoint's log signature and witness quorum under the policy, then the inclusion
proof of the entry at the receipt's index. The entry is the one given with ``--entry``, else
the one the receipt carries in its ``extra`` line (as ``etch receipt`` writes it). Nothing is
fetched: this works anywhere, any time later.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from client.commands._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_output_argument,
    add_trust_arguments,
    checkpoint_json,
    cosigner_text,
    emit_json,
    jsonable,
    read_secret_file,
)
from client.errors import ConfigurationError, ReceiptVerificationError
from client.logclient import policy_for_vkey, read_policy, verify_receipt_file
from merkle.policy import Policy

__all__ = ["register"]

EPILOG = """examples:
  etch verify 42.tlog-proof --policy policy.txt
  etch verify 42.tlog-proof --policy policy.txt --entry 42.entry
  etch verify 42.tlog-proof --vkey 'localhost/etch/log+1a2b3c4d+AQ...' --json

exit status: 0 valid, 1 invalid (the reason is printed), 2 usage
"""

MAX_FILE_BYTES = 1 << 20


def register(subparsers: Any) -> None:
    """Add the ``verify`` subcommand."""
    parser = subparsers.add_parser(
        "verify",
        help="verify a tlog-proof receipt offline",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", metavar="FILE", help="the receipt (.tlog-proof)")
    add_trust_arguments(parser)
    parser.add_argument("--entry", metavar="FILE", help="the entry's exact bytes")
    add_output_argument(parser)
    parser.set_defaults(func=_run)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigurationError(f"the {what} {path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def _policy(args: argparse.Namespace) -> Policy:
    if args.policy:
        return read_policy(Path(args.policy))
    if args.vkey:
        return policy_for_vkey(args.vkey)
    if args.vkey_file:
        return policy_for_vkey(read_secret_file(args.vkey_file, "vkey"))
    raise ConfigurationError("give the policy to verify against: --policy FILE (or --vkey)")


def _run(args: argparse.Namespace) -> int:
    try:
        policy = _policy(args)
        data = _read(args.file, "receipt")
        entry = _read(args.entry, "entry") if args.entry else None
    except ConfigurationError as exc:
        print(f"etch verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = verify_receipt_file(data, policy, entry)
    except ReceiptVerificationError as exc:
        if args.json:
            emit_json({"ok": False, "valid": False, "reason": str(exc)})
        print(f"etch verify: INVALID: {exc}", file=sys.stderr)
        return EXIT_FAILED
    checkpoint = report.checkpoint
    if args.json:
        document: dict[str, Any] = {
            "ok": True,
            "valid": True,
            "index": report.index,
            "entry_source": report.entry_source,
            "checkpoint": checkpoint_json(checkpoint),
        }
        if report.leaf is not None:
            document["event"] = jsonable(dict(report.leaf.event))
            document["submitter"] = report.leaf.submitter
            document["log_time"] = report.leaf.log_time
        emit_json(document)
        return EXIT_OK
    lines = [
        f"valid: entry {report.index} is in {checkpoint.origin} "
        f"(tree size {checkpoint.tree_size}, root {checkpoint.root_hash.hex()})",
        f"cosigned by {cosigner_text(checkpoint, policy)}",
        f"entry taken from: {report.entry_source}",
    ]
    if report.leaf is not None:
        event = report.leaf.event
        lines.append(
            f"event: {event.get('type', '?')} by submitter {report.leaf.submitter}, "
            f"client {event.get('client_id', '-')}"
        )
    print("\n".join(lines))
    return EXIT_OK
