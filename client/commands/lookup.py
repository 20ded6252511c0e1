"""``etch lookup``: find a token's events (or a client's, a subject's, a type's) and verify them.

The log's lookup only names entries; each one is then read from the log's entry bundles, its
inclusion under the freshly verified checkpoint is proved with tiles, and its event must really
match what was asked. A token is read from standard input or a file, never from the command
line (it would land in shell history and process listings), and never leaves this process:
only its token reference is sent.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from typing import Any

from client.commands._common import (
    EXIT_OK,
    EXIT_USAGE,
    add_log_arguments,
    checkpoint_json,
    cosigner_text,
    emit_json,
    jsonable,
    run_client_command,
    utc,
)
from client.errors import ConfigurationError
from client.logclient import LogClient, LookupQuery, VerifiedEntry
from client.tokens import token_ref
from merkle.note import encode_base64

__all__ = ["add_token_arguments", "parse_time", "read_token", "register"]

EPILOG = """examples:
  etch lookup < token.txt                          # the token on standard input
  etch lookup --token-file token.txt --json
  etch lookup --token-ref=-bfU429PR50gUa3RLbpGgosKKPkwMRgFyt9OMlQb4OQ   # '=': it may start with -
  etch lookup --client-id s6BhdRkqt3 --since 2026-01-01T00:00:00Z --credential-file reader.cred
  etch lookup --type token-revoked --until 1767225600

exit status: 0 every answer verified, 1 verification failed or log unreachable, 2 usage
"""

_POSIX = re.compile(r"(?:0|[1-9][0-9]{0,11})\Z")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")


def add_token_arguments(parser: argparse.ArgumentParser, group: Any | None = None) -> None:
    """Add ``--token-file FILE`` and ``--token-stdin`` to ``group`` (or the parser)."""
    target = group if group is not None else parser
    target.add_argument(
        "--token-file", metavar="FILE", help="read the token from FILE ('-': standard input)"
    )
    target.add_argument(
        "--token-stdin", action="store_true", help="read the token from standard input"
    )


def read_token(args: argparse.Namespace) -> bytes | None:
    """Return the token the arguments point at, or ``None`` if they name none.

    Reads ``--token-file`` or standard input (``--token-stdin``, ``--token-file -``); one
    trailing line ending is removed. Raises ConfigurationError for an empty or unreadable
    token (never quoting it).
    """
    if getattr(args, "token_stdin", False) or getattr(args, "token_file", None) == "-":
        data = sys.stdin.buffer.read(64 * 1024 + 1)
    elif getattr(args, "token_file", None):
        try:
            with open(args.token_file, "rb") as handle:
                data = handle.read(64 * 1024 + 1)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the token file {args.token_file}: {exc.strerror}"
            ) from None
    else:
        return None
    if len(data) > 64 * 1024:
        raise ConfigurationError("the token is larger than 64 KiB")
    token = data.removesuffix(b"\n").removesuffix(b"\r")
    if not token:
        raise ConfigurationError("the token is empty")
    return token


def parse_time(text: str, what: str) -> int:
    """Return POSIX milliseconds for ``2026-01-01T00:00:00Z`` or POSIX seconds ``1767225600``.

    Raises ConfigurationError for anything else (signs, spaces, fractions, other zones).
    """
    if _POSIX.match(text):
        return int(text) * 1000
    if _RFC3339.match(text):
        try:
            moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise ConfigurationError(f"{what} is not a valid time") from None
        return int(moment.replace(tzinfo=datetime.UTC).timestamp()) * 1000
    raise ConfigurationError(f"{what} must be POSIX seconds or YYYY-MM-DDTHH:MM:SSZ")


def register(subparsers: Any) -> None:
    """Add the ``lookup`` subcommand."""
    parser = subparsers.add_parser(
        "lookup",
        help="find and verify the events of a token, client, subject or type",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group()
    add_token_arguments(parser, group)
    group.add_argument("--token-ref", metavar="REF", help="a token reference (not a token)")
    group.add_argument("--client-id", metavar="ID", help="events of this OAuth client")
    group.add_argument("--subject", metavar="SUB", help="events of this subject pseudonym")
    group.add_argument("--type", metavar="TYPE", help="events of this type, e.g. token-revoked")
    parser.add_argument("--since", metavar="TIME", help="log time from (seconds or RFC 3339)")
    parser.add_argument("--until", metavar="TIME", help="log time before (seconds or RFC 3339)")
    add_log_arguments(parser)
    parser.set_defaults(func=_run)


def _query(args: argparse.Namespace) -> LookupQuery:
    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    token = read_token(args)
    if token is None and not any((args.token_ref, args.client_id, args.subject, args.type)):
        if sys.stdin.isatty():
            raise ConfigurationError(
                "give a token on standard input (--token-stdin), --token-file, --token-ref, "
                "--client-id, --subject or --type"
            )
        args.token_stdin = True
        token = read_token(args)
    if token is not None:
        return LookupQuery("token_ref", token_ref(token), since, until)
    for kind in ("token_ref", "client_id", "subject", "type"):
        value = getattr(args, kind)
        if value:
            return LookupQuery(kind, value, since, until)
    raise ConfigurationError("nothing to look up")


def _run(args: argparse.Namespace) -> int:
    try:
        query = _query(args)
    except ConfigurationError as exc:
        print(f"etch lookup: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def body(client: LogClient) -> int:
        checkpoint = await client.current()
        entries, pending = await client.lookup(query, checkpoint)
        if args.json:
            emit_json(
                {
                    "ok": True,
                    "query": {
                        "kind": query.kind,
                        "value": query.value,
                        "since_ms": query.since_ms,
                        "until_ms": query.until_ms,
                    },
                    "checkpoint": checkpoint_json(checkpoint),
                    "events": [entry_json(e) for e in entries],
                    "pending": pending,
                }
            )
        else:
            print(_human(client, query, entries, pending))
        return EXIT_OK

    return run_client_command("lookup", args, body)


def entry_json(entry: VerifiedEntry) -> dict[str, Any]:
    """Return the JSON form of a verified entry (leaf fields decoded when it is an event)."""
    document: dict[str, Any] = {
        "index": entry.index,
        "leaf_hash": encode_base64(entry.leaf_hash),
        "tree_size": entry.checkpoint.tree_size,
        "entry": encode_base64(entry.entry),
    }
    if entry.leaf is not None:
        document["submitter"] = entry.leaf.submitter
        document["log_time"] = entry.leaf.log_time
        document["event"] = jsonable(dict(entry.leaf.event))
    return document


def describe_entry(entry: VerifiedEntry) -> str:
    """Return one human line for a verified entry."""
    leaf = entry.leaf
    if leaf is None:
        return f"  #{entry.index}  (not an event leaf, {len(entry.entry)} bytes)"
    event = leaf.event
    parts = [f"#{entry.index}", utc(leaf.log_time / 1000), str(event.get("type", "?"))]
    for name in ("client_id", "sub", "token_type", "grant_type", "reason", "active"):
        if name in event:
            parts.append(f"{name}={event[name]}")
    parts.append(f"by {leaf.submitter}")
    return "  " + "  ".join(parts)


def _human(
    client: LogClient, query: LookupQuery, entries: list[VerifiedEntry], pending: list[int]
) -> str:
    if not entries:
        lines = [f"no event found for {query.kind} {query.value}"]
    else:
        lines = [f"{len(entries)} event(s) for {query.kind} {query.value}:"]
        lines += [describe_entry(e) for e in entries]
    if entries:
        checkpoint = entries[0].checkpoint
        lines.append(
            f"verified: each entry hashes to its leaf and is included in {checkpoint.origin} at "
            f"size {checkpoint.tree_size}, cosigned by {cosigner_text(checkpoint, client.policy)}"
        )
    if pending:
        lines.append(
            f"pending: {len(pending)} more entr(y/ies) not yet covered by a published checkpoint "
            f"({', '.join(str(i) for i in pending[:10])})"
        )
    return "\n".join(lines)
