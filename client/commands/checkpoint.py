"""``etch checkpoint``: fetch the log's checkpoint, verify it, show it, and trust it.

Verifies the log's signature and the witness quorum of the policy, then proves the checkpoint
consistent with the one trusted before (a proof the client builds from the log's tiles) and
makes it the trusted state. A log that rolled back or forked makes it exit 1 and write an
evidence file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from client.commands._common import (
    EXIT_OK,
    add_log_arguments,
    checkpoint_json,
    cosigner_text,
    emit_json,
    run_client_command,
)
from client.logclient import LogClient, Update

__all__ = ["register"]

EPILOG = """examples:
  etch checkpoint                                   # the make run log, its policy
  etch checkpoint --log https://log.example.com --policy policy.txt
  etch checkpoint --vkey 'localhost/etch/log+1a2b3c4d+AQ...' --json
  etch checkpoint --no-update                       # verify only, do not advance the state

exit status: 0 verified, 1 verification failed (evidence written) or log unreachable, 2 usage
"""


def register(subparsers: Any) -> None:
    """Add the ``checkpoint`` subcommand."""
    parser = subparsers.add_parser(
        "checkpoint",
        help="fetch, verify and show the log's checkpoint",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_log_arguments(parser, credential=False)
    parser.add_argument(
        "--no-update",
        action="store_true",
        help="verify the signature and quorum only; leave the trusted state alone",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    async def body(client: LogClient) -> int:
        if args.no_update:
            current = await client.fetch_checkpoint()
            update = Update(None, current, (), False)
        else:
            update = await client.update()
        _print(client, update, args)
        return EXIT_OK

    return run_client_command("checkpoint", args, body)


def _print(client: LogClient, update: Update, args: argparse.Namespace) -> None:
    current = update.current
    previous = update.previous
    if args.json:
        document = {"ok": True, **checkpoint_json(current)}
        document["quorum"] = client.policy.quorum
        document["previous_size"] = previous.tree_size if previous else None
        document["advanced"] = update.advanced
        document["consistency_proof_hashes"] = len(update.proof)
        emit_json(document)
        return
    if args.no_update:
        trust = "not checked against the trusted state (--no-update)"
    elif previous is None:
        trust = "first use: now trusted"
    elif update.advanced and previous.tree_size < current.tree_size:
        trust = (
            f"consistent with the trusted size {previous.tree_size} "
            f"(proof of {len(update.proof)} hashes built from tiles); now trusted"
        )
    else:
        trust = "unchanged since the last check"
    lines = [
        f"log        {current.origin} at {client.url}",
        f"tree size  {current.tree_size}",
        f"root hash  {current.root_hash.hex()}",
        f"signed by  {'+'.join(client.log_vkey(current.origin).split('+')[:2])} (the log's key)",
        f"cosigned   {cosigner_text(current, client.policy)}",
        f"trusted    {trust}",
    ]
    print("\n".join(lines), file=sys.stdout)
