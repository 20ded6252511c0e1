"""What the ``etch`` commands that talk to a log share: options, trust, output, exit status.

Not a command module itself. Every command that reads a log takes:

``--log URL``            the log (default ``http://127.0.0.1:8080``, the ``make run`` log)
``--policy FILE``        a C2SP tlog-policy: the log's key and the witness quorum
``--vkey VKEY``          or just the log's key (no witness quorum); ``--vkey-file FILE`` alike
``--state-dir DIR``      where trusted states and evidence live
``--credential-file F``  a reader's (or submitter's) bearer credential, for entry contents
``--json``               machine-readable output

Without ``--policy``/``--vkey``, the policy file named by ``ETCH_POLICY_FILE`` is used, then
``.etch/policy.txt`` (what ``make run`` writes in the working directory). The state directory
defaults to ``ETCH_STATE_DIR``, else ``$XDG_STATE_HOME/etch``, else ``~/.local/state/etch``.
This module is the only place the client's commands read the environment.

Exit status: 0 ok, 1 verification failed or the log could not be used, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TextIO

from client.errors import (
    ClientError,
    ConfigurationError,
    LogMisbehaviour,
    VerificationError,
)
from client.logclient import (
    DEFAULT_LOG_URL,
    LogClient,
    VerifiedCheckpoint,
    policy_for_vkey,
    read_policy,
)
from merkle.note import encode_base64
from merkle.policy import Policy

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_log_arguments",
    "add_output_argument",
    "emit_json",
    "make_client",
    "read_secret_file",
    "resolve_policy",
    "run_client_command",
    "state_dir",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

MAKE_RUN_POLICY: Final = Path(".etch") / "policy.txt"
"""The policy ``make run`` writes beside the checkout."""

def add_output_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``."""
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of text"
    )


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--policy``, ``--vkey`` and ``--vkey-file`` (mutually exclusive)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--policy", metavar="FILE", help="C2SP tlog-policy file (log and witnesses)")
    group.add_argument("--vkey", metavar="VKEY", help="the log's verifier key (no witness quorum)")
    group.add_argument("--vkey-file", metavar="FILE", help="file holding the log's verifier key")


def add_log_arguments(
    parser: argparse.ArgumentParser, *, credential: bool = True, http: str = "httpx"
) -> None:
    """Add the options every command that reads a log takes (see the module docstring).

    ``http`` is the default HTTP client (``--http``).
    """
    parser.add_argument(
        "--log", default=DEFAULT_LOG_URL, metavar="URL", help=f"the log (default {DEFAULT_LOG_URL})"
    )
    add_trust_arguments(parser)
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="trusted states and evidence (default $ETCH_STATE_DIR, ~/.local/state/etch)",
    )
    parser.add_argument(
        "--evidence-dir", metavar="DIR", help="where evidence files go (default STATE_DIR/evidence)"
    )
    if credential:
        parser.add_argument(
            "--credential-file",
            metavar="FILE",
            help="bearer credential of a reader, to read entry contents",
        )
    parser.add_argument(
        "--timeout", type=float, default=15.0, metavar="S", help="per request (default 15)"
    )
    parser.add_argument(
        "--http",
        choices=("httpx", "lean"),
        default=http,
        help=f"HTTP client: httpx (proxies honoured) or lean (less CPU; default {http})",
    )
    add_output_argument(parser)


def state_dir(args: argparse.Namespace) -> Path:
    """Return the state directory from ``--state-dir`` or the environment (module docstring)."""
    given = getattr(args, "state_dir", None)
    if given:
        return Path(given)
    env = os.environ
    if env.get("ETCH_STATE_DIR"):
        return Path(env["ETCH_STATE_DIR"])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "etch"
    return Path.home() / ".local" / "state" / "etch"


def read_secret_file(path: str, what: str) -> str:
    """Return the first line of a secret file, stripped. Raises ConfigurationError.

    The contents never appear in an error.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(16 * 1024 + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if len(raw) > 16 * 1024:
        raise ConfigurationError(f"the {what} file {path} is too large")
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigurationError(f"the {what} file {path} is not ASCII text") from None
    if not text or "\n" in text:
        raise ConfigurationError(f"the {what} file {path} must hold exactly one line")
    return text


def resolve_policy(args: argparse.Namespace) -> Policy:
    """Return the policy the arguments name (see the module docstring).

    Raises ConfigurationError when none is given and no default exists.
    """
    if getattr(args, "policy", None):
        return read_policy(Path(args.policy))
    if getattr(args, "vkey", None):
        return policy_for_vkey(args.vkey)
    if getattr(args, "vkey_file", None):
        return policy_for_vkey(read_secret_file(args.vkey_file, "vkey"))
    env_policy = os.environ.get("ETCH_POLICY_FILE")
    if env_policy:
        return read_policy(Path(env_policy))
    if MAKE_RUN_POLICY.is_file():
        return read_policy(MAKE_RUN_POLICY)
    raise ConfigurationError(
        "say which log key to trust: --policy FILE (log and witnesses) or --vkey VKEY"
    )


def make_client(args: argparse.Namespace, **options: Any) -> LogClient:
    """Build the LogClient the common options describe. Raises ConfigurationError."""
    credential = None
    if getattr(args, "credential_file", None):
        credential = read_secret_file(args.credential_file, "credential")
    directory = state_dir(args)
    evidence = Path(args.evidence_dir) if getattr(args, "evidence_dir", None) else None
    return LogClient(
        args.log,
        resolve_policy(args),
        state_dir=directory,
        evidence_dir=evidence,
        credential=credential,
        timeout=args.timeout,
        lean_http=getattr(args, "http", "httpx") == "lean",
        **options,
    )


def emit_json(document: Any, out: TextIO | None = None) -> None:
    """Print one JSON document (one line) to ``out`` (default stdout)."""
    print(json.dumps(document, ensure_ascii=False, separators=(",", ":")), file=out or sys.stdout)


def error_document(error: Exception) -> dict[str, Any]:
    """Return the JSON form of a failure: its class, message and evidence file if any."""
    document: dict[str, Any] = {"ok": False, "error": type(error).__name__, "message": str(error)}
    if isinstance(error, LogMisbehaviour):
        document["kind"] = error.kind
        document["evidence"] = str(error.evidence_path) if error.evidence_path else None
    return document


def report_error(command: str, error: Exception, as_json: bool) -> int:
    """Print a failure (stderr, and stdout as JSON with ``--json``); return its exit status."""
    status = EXIT_USAGE if isinstance(error, ConfigurationError) else EXIT_FAILED
    if isinstance(error, LogMisbehaviour):
        prefix = "LOG MISBEHAVIOUR: "
    elif isinstance(error, VerificationError):
        prefix = "verification failed: "
    else:
        prefix = ""
    print(f"etch {command}: {prefix}{error}", file=sys.stderr)
    if as_json:
        emit_json(error_document(error))
    return status


def run_client_command(
    command: str,
    args: argparse.Namespace,
    body: Callable[[LogClient], Awaitable[int]],
    **options: Any,
) -> int:
    """Build the client, run ``body`` with it on a fresh event loop, and map errors to exits.

    ClientError, ValueError (bad tokens) and OSError become one line on stderr and exit 1
    (2 for configuration); a keyboard interrupt exits 130.
    """
    as_json = bool(getattr(args, "json", False))
    try:
        client = make_client(args, **options)
    except ClientError as exc:
        return report_error(command, exc, as_json)

    async def main() -> int:
        async with client:
            return await body(client)

    try:
        return asyncio.run(main())
    except ClientError as exc:
        return report_error(command, exc, as_json)
    except (ValueError, OSError) as exc:
        return report_error(command, ClientError(str(exc)), as_json)
    except KeyboardInterrupt:
        print(f"etch {command}: interrupted", file=sys.stderr)
        return 130



def utc(seconds: float) -> str:
    """Return POSIX seconds as an RFC 3339 UTC time, e.g. ``2026-01-01T00:00:00Z``."""
    import datetime

    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def checkpoint_json(checkpoint: VerifiedCheckpoint) -> dict[str, Any]:
    """Return the JSON form of a verified checkpoint."""
    return {
        "origin": checkpoint.origin,
        "tree_size": checkpoint.tree_size,
        "root_hash": encode_base64(checkpoint.root_hash),
        "cosigners": [
            {"name": c.name, "key_name": c.key_name, "timestamp": c.timestamp}
            for c in checkpoint.cosigners
        ],
        "checkpoint": checkpoint.note.decode("utf-8", errors="replace"),
    }


def cosigner_text(checkpoint: VerifiedCheckpoint, policy: Policy) -> str:
    """Return who cosigned, for humans: names and times, and whether the quorum is met."""
    if not checkpoint.cosigners:
        names = "nobody"
    else:
        names = ", ".join(f"{c.name} at {utc(c.timestamp)}" for c in checkpoint.cosigners)
    if policy.quorum == "none":
        return f"{names} (no witness quorum required)"
    return f"{names} (quorum {policy.quorum}: met)"


def jsonable(value: object) -> Any:
    """Return a CBOR-decoded value in JSON form (byte strings as standard base64)."""
    if isinstance(value, bytes):
        return encode_base64(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
