"""``etch submitter``: register, list and revoke the OAuth servers that submit events.

Works directly on the log's database (the same ``--data-dir`` / ``--database-url`` /
``--config`` as ``etch serve``, and the same ``ETCH_*`` variables), also while the log runs::

    etch submitter add as-prod --public-key as-prod.pub.pem
    etch submitter add as-dev --generate-key            # writes ./as-dev.key (mode 0600)
    etch submitter add-key as-prod --set-key jwks-key.json --issuer https://as.example.com
    etch submitter list
    etch submitter revoke as-dev

``add`` prints the submitter's bearer credential once; only its hash is stored, so it cannot be
shown again (revoke and add a new submitter instead). ``--generate-key`` creates the Ed25519
key pair that signs events and writes the private key (PKCS#8 PEM) to a new file that only its
owner may read. Exit status: 0 done, 1 refused (name taken, unknown name, bad key, database
trouble), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["open_principal_storage", "register"]

T = TypeVar("T")

EPILOG = """examples:
  etch submitter add as-prod --public-key as-prod.pub.pem
  etch submitter add as-dev --generate-key --key-file as-dev.key
  etch submitter add-key as-prod --set-key key.jwk.json --issuer https://as.example.com
  etch submitter list
  etch submitter revoke as-dev
"""


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--data-dir``, ``--database-url`` (as ``etch serve`` has them) and
    ``--log-name`` (one of the configuration's ``[logs.<name>]``; default: the top-level log)."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--log-name", dest="log_name", metavar="NAME", help="a [logs.<name>] of the configuration"
    )
    parser.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="data directory")
    parser.add_argument(
        "--database-url", dest="database_url", metavar="URL", help="postgresql:// URL or file"
    )


def open_principal_storage(args: argparse.Namespace) -> Any:
    """Return the log's storage (unopened) named by the arguments and the environment.

    Raises ConfigError for bad settings.
    """
    from server.config import ConfigError, settings_from_args
    from server.storage import open_storage

    settings = settings_from_args(args, os.environ)
    name = getattr(args, "log_name", None)
    if name is not None:
        if name not in settings.log_names:
            raise ConfigError(f"--log-name: the configuration has no log {name}")
        settings = settings.log_settings(name)
    if not settings.is_postgres:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return open_storage(settings.database)


def run_with_storage(
    args: argparse.Namespace, command: str, body: Callable[[Any], Awaitable[int]]
) -> int:
    """Open the storage, run ``body(storage)``, close; map errors to exit statuses."""
    from server.config import ConfigError
    from server.jose import JoseError
    from server.storage.base import IntegrityError, StorageError

    try:
        storage = open_principal_storage(args)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"etch {command}: {exc}", file=sys.stderr)
        return 2

    async def go() -> int:
        await storage.open()
        try:
            return await body(storage)
        finally:
            await storage.close()

    try:
        return asyncio.run(go())
    except IntegrityError as exc:
        print(f"etch {command}: refused: {exc}", file=sys.stderr)
    except JoseError as exc:
        print(f"etch {command}: bad key: {exc.description}", file=sys.stderr)
    except (StorageError, OSError) as exc:
        print(f"etch {command}: {exc}", file=sys.stderr)
    return 1


def parse_seconds(text: str) -> int:
    """Parse a canonical decimal POSIX time in seconds (argparse ``type``)."""
    from merkle.checkpoint import parse_decimal
    from merkle.errors import MalformedError

    try:
        return parse_decimal(text, what="time", maximum=253_402_300_799)
    except MalformedError:
        raise argparse.ArgumentTypeError("a POSIX time in seconds, e.g. 1798761600") from None


def format_ms(ms: int | None) -> str:
    """Return a POSIX millisecond time as RFC 3339 UTC text (``-`` for none)."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_private_key(path: Path, data: bytes) -> None:
    """Write a private key to a new file with mode 0600 (never replacing an existing file).

    Raises OSError (FileExistsError if ``path`` exists).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(path, flags, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_key_file(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read(64 * 1024)


def _keys(args: argparse.Namespace, now_ms: int) -> tuple[Any, ...]:
    """Return the PrincipalKeys named by --public-key and --set-key. Raises JoseError, OSError."""
    from server.principals import event_key, set_key

    not_after = None if args.not_after is None else args.not_after * 1000
    keys: list[Any] = []
    if getattr(args, "public_key", None):
        keys.append(
            event_key(_read_key_file(args.public_key), now_ms=now_ms, not_after_ms=not_after)
        )
    for path in args.set_key or ():
        keys.append(
            set_key(_read_key_file(path), now_ms=now_ms, not_after_ms=not_after, issuer=args.issuer)
        )
    return tuple(keys)


def _add(args: argparse.Namespace) -> int:
    from server.principals import new_principal, private_key_text

    now_ms = int(time.time() * 1000)
    key_file = Path(args.key_file or f"{args.name}.key") if args.generate_key else None
    if key_file is not None and key_file.exists():
        print(f"etch submitter add: {key_file} exists; choose --key-file", file=sys.stderr)
        return 1

    async def body(storage: Any) -> int:
        keys = _keys(args, now_ms)
        if await storage.get_principal("submitter", args.name) is not None:
            print(f"etch submitter add: a submitter named {args.name} exists", file=sys.stderr)
            return 1
        created = new_principal(
            "submitter", args.name, now_ms=now_ms, keys=keys, generate_key=args.generate_key
        )
        await storage.add_principal(created.principal)
        if key_file is not None and created.private_key is not None:
            write_private_key(key_file, private_key_text(created.private_key))
            print(f"private key: {key_file} (Ed25519, PKCS#8 PEM, mode 0600)")
        for key in created.principal.keys:
            print(f"key: {key.key_id} {key.usage} {key.algorithm}")
        print(f"submitter: {args.name}")
        print(f"credential: {created.credential}")
        print("(shown once: send it as Authorization: Bearer <credential>)")
        return 0

    return run_with_storage(args, "submitter add", body)


def _add_key(args: argparse.Namespace) -> int:
    now_ms = int(time.time() * 1000)

    if not args.public_key and not args.set_key:
        print("etch submitter add-key: give --public-key or --set-key", file=sys.stderr)
        return 2

    async def body(storage: Any) -> int:
        keys = _keys(args, now_ms)
        for key in keys:
            await storage.add_principal_key("submitter", args.name, key)
            print(f"key: {key.key_id} {key.usage} {key.algorithm}")
        return 0

    return run_with_storage(args, "submitter add-key", body)


def print_principals(principals: list[Any]) -> None:
    """Print one line per principal and one indented line per key."""
    for principal in principals:
        print(f"{principal.name}\t{principal.status}\tcreated {format_ms(principal.created_ms)}")
        for key in principal.keys:
            extra = f"\tissuer {key.issuer}" if key.issuer else ""
            print(
                f"  key {key.key_id}\t{key.usage}\t{key.algorithm}"
                f"\tnot after {format_ms(key.not_after_ms)}{extra}"
            )


def list_command(role: str) -> Callable[[argparse.Namespace], int]:
    """Return the ``list`` subcommand of ``role``."""

    def run(args: argparse.Namespace) -> int:
        async def body(storage: Any) -> int:
            print_principals(await storage.list_principals(role))
            return 0

        return run_with_storage(args, f"{role} list", body)

    return run


def revoke_command(role: str) -> Callable[[argparse.Namespace], int]:
    """Return the ``revoke`` subcommand of ``role``."""

    def run(args: argparse.Namespace) -> int:
        async def body(storage: Any) -> int:
            if not await storage.set_principal_status(role, args.name, "revoked"):
                print(f"etch {role} revoke: no {role} named {args.name}", file=sys.stderr)
                return 1
            print(f"{role} {args.name} revoked")
            return 0

        return run_with_storage(args, f"{role} revoke", body)

    return run


def _key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set-key", action="append", metavar="FILE", help="SET key (JWK or PEM)")
    parser.add_argument("--issuer", metavar="ISS", help="the iss SETs signed with --set-key carry")
    parser.add_argument(
        "--not-after", type=parse_seconds, metavar="SECONDS", help="keys expire then (POSIX s)"
    )


def register(subparsers: Any) -> None:
    """Add ``etch submitter`` with ``add``, ``add-key``, ``list`` and ``revoke``."""
    parser = subparsers.add_parser(
        "submitter",
        help="register, list and revoke submitters (OAuth servers)",
        description="Manage the OAuth servers allowed to submit events to this log.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        dest="submitter_command", metavar="COMMAND", parser_class=type(parser)
    )
    parser.set_defaults(func=lambda _args: _usage(parser))

    add = commands.add_parser("add", help="register a submitter; prints its credential once")
    add.add_argument("name", help="1-64 characters A-Z a-z 0-9 . _ -")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--public-key", metavar="FILE", help="Ed25519 public key (PEM, JWK)")
    source.add_argument(
        "--generate-key", action="store_true", help="create the Ed25519 key pair here"
    )
    add.add_argument("--key-file", metavar="FILE", help="where --generate-key writes (NAME.key)")
    _key_arguments(add)
    add_database_arguments(add)
    add.set_defaults(func=_add)

    add_key = commands.add_parser("add-key", help="register another key of a submitter")
    add_key.add_argument("name")
    add_key.add_argument("--public-key", metavar="FILE", help="Ed25519 event key (PEM, JWK)")
    _key_arguments(add_key)
    add_database_arguments(add_key)
    add_key.set_defaults(func=_add_key)

    listing = commands.add_parser("list", help="list submitters and their keys")
    add_database_arguments(listing)
    listing.set_defaults(func=list_command("submitter"))

    revoke = commands.add_parser("revoke", help="revoke a submitter (its requests get 403)")
    revoke.add_argument("name")
    add_database_arguments(revoke)
    revoke.set_defaults(func=revoke_command("submitter"))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2
