"""``etch evidence verify``: check an evidence file with nothing but the log's vkey.

Reads witness evidence (``etch-witness-evidence/v1``, which witnesses serve and clients also
write for forks) and the client's own (``etch-client-evidence/v1``: rollbacks, untrusted
checkpoints, tiles or entries that do not hash into a signed root), and says what the file
proves: *definitive* evidence convicts the log by itself (two checkpoints it signed that cannot
both be honest); the rest documents what the log served.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from client.commands._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_output_argument,
    emit_json,
    read_secret_file,
)
from client.errors import ConfigurationError, VerificationError
from client.logclient import CLIENT_EVIDENCE_FORMAT, verify_client_evidence
from merkle.errors import MalformedError
from merkle.note import parse_verifier

__all__ = ["register"]

EPILOG = """examples:
  etch evidence verify ~/.local/state/etch/evidence/20260101T000000Z-same-size-1a2b.json \\
      --vkey 'log.example.com/oauth/2026+1a2b3c4d+AQ...'
  etch evidence verify fork.json --vkey-file log.vkey --json

exit status: 0 the evidence holds, 1 it does not (malformed, unsigned, or shows nothing), 2 usage
"""

MAX_EVIDENCE_BYTES = 1 << 20


def register(subparsers: Any) -> None:
    """Add the ``evidence`` subcommand (``evidence verify``)."""
    parser = subparsers.add_parser(
        "evidence",
        help="verify evidence of log misbehaviour",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = actions.add_parser(
        "verify",
        help="check an evidence file against the log's vkey",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("file", metavar="FILE", help="the evidence (JSON)")
    keys = verify.add_mutually_exclusive_group(required=True)
    keys.add_argument("--vkey", metavar="VKEY", help="the log's verifier key")
    keys.add_argument("--vkey-file", metavar="FILE", help="file holding the log's verifier key")
    add_output_argument(verify)
    verify.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    try:
        vkey = args.vkey or read_secret_file(args.vkey_file, "vkey")
        with open(args.file, "rb") as handle:
            data = handle.read(MAX_EVIDENCE_BYTES + 1)
    except ConfigurationError as exc:
        print(f"etch evidence: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"etch evidence: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        origin, kind, definitive, summary = _check(data, vkey)
    except ConfigurationError as exc:
        print(f"etch evidence: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VerificationError as exc:
        if args.json:
            emit_json({"ok": False, "valid": False, "reason": str(exc)})
        print(f"etch evidence: does not hold: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        emit_json(
            {
                "ok": True,
                "valid": True,
                "origin": origin,
                "kind": kind,
                "definitive": definitive,
                "summary": summary,
            }
        )
    else:
        strength = "DEFINITIVE" if definitive else "not definitive"
        print(f"evidence holds ({kind}, {strength}) for {origin}:\n  {summary}")
    return EXIT_OK


def _format_of(data: bytes) -> object:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return document.get("format") if isinstance(document, dict) else None


def _check(data: bytes, vkey: str) -> tuple[str, str, bool, str]:
    """Verify either format; return (origin, kind, definitive, summary).

    Raises VerificationError if the evidence does not hold, ConfigurationError for a bad vkey.
    """
    try:
        parse_verifier(vkey)
    except MalformedError as exc:
        raise ConfigurationError(f"invalid log vkey: {exc}") from None
    if _format_of(data) == CLIENT_EVIDENCE_FORMAT:
        report = verify_client_evidence(data, vkey)
        return report.origin, report.kind, report.definitive, report.summary
    from witness.errors import EvidenceError
    from witness.evidence import verify_evidence

    try:
        witness_report = verify_evidence(data, vkey)
    except EvidenceError as exc:
        raise VerificationError(str(exc)) from None
    return (
        witness_report.origin,
        witness_report.kind,
        witness_report.definitive,
        witness_report.summary,
    )
