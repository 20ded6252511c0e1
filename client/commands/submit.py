"""``etch submit``: sign one event with the submitter's key, send it, and verify the receipt.

Reads the event (a JSON object) from FILE or standard input, fills ``jti`` (random) and
``iat`` (now) when missing and ``iss`` from ``--issuer``, signs ``b"etch/event/v1\\x00" ||
deterministic CBOR(event)`` with the submitter's Ed25519 key and posts ``{"event": ...,
"signature": <base64>}`` to ``POST /v1/events`` with the submitter's bearer credential. The
answer is verified like the emitter does: the checkpoint's log signature, the inclusion proof,
and that the logged entry holds exactly this event and signature. ``-o FILE`` writes the
receipt (with the entry in its ``extra`` line).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from client.commands._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_log_arguments,
    emit_json,
    run_client_command,
)
from client.errors import ConfigurationError, LogResponseError, LogUnavailableError
from client.logclient import LogClient, atomic_write
from merkle.checkpoint import parse_checkpoint
from merkle.errors import MalformedError
from merkle.note import Verifier, encode_base64, parse_note
from merkle.receipt import Receipt, format_receipt, parse_receipt

__all__ = ["read_event", "register"]

EPILOG = """examples:
  etch submit event.json --key as-prod.key --credential-file as-prod.cred
  echo '{"type":"token-revoked","client_id":"app","token_ref":"..."}' | \\
      etch submit --issuer https://as.example.com --key as-prod.key --credential-file as-prod.cred
  etch submit event.json --key .etch/demo/demo.key --credential-file .etch/demo/credential \\
      -o event.tlog-proof --json
  etch submit event.json --key .etch/demo/demo.key --envelope-only > envelope.json   # for curl

exit status: 0 logged and verified, 1 refused by the log or the answer does not verify, 2 usage
"""

MAX_EVENT_BYTES = 256 * 1024


def register(subparsers: Any) -> None:
    """Add the ``submit`` subcommand."""
    parser = subparsers.add_parser(
        "submit",
        help="sign and submit one event, verify its receipt",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="the event, JSON (default: stdin)"
    )
    parser.add_argument(
        "--key", required=True, metavar="FILE", help="the submitter's Ed25519 private key file"
    )
    parser.add_argument("--issuer", metavar="ISS", help="fill iss when the event has none")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the receipt here")
    parser.add_argument(
        "--envelope-only",
        action="store_true",
        help="print the signed request body and send nothing (for curl or another client)",
    )
    add_log_arguments(parser)
    parser.set_defaults(func=_run)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigurationError(f"the event repeats the member {key!r}")
        result[key] = value
    return result


def _no_floats(text: str) -> Any:
    raise ConfigurationError("events hold no floating-point numbers (use integers)")


def read_event(source: str) -> dict[str, Any]:
    """Read one event (a JSON object) from a file or ``-`` (stdin). Raises ConfigurationError.

    Strict JSON: no duplicate members, no floats, no NaN or Infinity.
    """
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_EVENT_BYTES + 1)
        else:
            with open(source, "rb") as handle:
                data = handle.read(MAX_EVENT_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the event {source}: {exc.strerror}") from None
    if len(data) > MAX_EVENT_BYTES:
        raise ConfigurationError(f"the event is larger than {MAX_EVENT_BYTES} bytes")
    try:
        event = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_float=_no_floats,
            parse_constant=_no_floats,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"the event is not UTF-8 JSON: {exc}") from None
    if not isinstance(event, dict):
        raise ConfigurationError("the event must be a JSON object")
    return event


def _log_verifier(client: LogClient, checkpoint_text: str) -> Verifier:
    try:
        origin = parse_checkpoint(parse_note(checkpoint_text.encode("utf-8")).text).origin
    except (MalformedError, UnicodeError):
        raise LogResponseError("the log's answer holds no well-formed checkpoint") from None
    vkey = client.log_vkey(origin)
    return next(log.verifier for log in client.policy.logs if log.vkey == vkey)


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"the log answered {response.status_code}"
    if isinstance(body, dict):
        title = body.get("title") or body.get("type") or ""
        detail = body.get("detail") or ""
        return f"the log answered {response.status_code}: {title} {detail}".strip()
    return f"the log answered {response.status_code}"


def _run(args: argparse.Namespace) -> int:
    from client.emitter import ReceiptError, load_signing_key, sign_event, verify_result

    if not args.credential_file and not args.envelope_only:
        print("etch submit: --credential-file (the submitter's credential) is required",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        event = read_event(args.file)
        key = load_signing_key(args.key)
    except ConfigurationError as exc:
        print(f"etch submit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"etch submit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    event.setdefault("jti", secrets.token_hex(16))
    event.setdefault("iat", int(time.time()))
    if args.issuer:
        event.setdefault("iss", args.issuer)
    try:
        event_cbor, signature = sign_event(event, key)
    except ValueError as exc:
        print(f"etch submit: the event cannot be encoded: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.envelope_only:
        envelope = {"event": event, "signature": encode_base64(signature)}
        sys.stdout.write(json.dumps(envelope, separators=(",", ":")) + "\n")
        return EXIT_OK

    async def body(client: LogClient) -> int:
        url = f"{client.url}/v1/events"
        try:
            response = await client.http.post(
                url, json={"event": event, "signature": encode_base64(signature)}
            )
        except httpx.HTTPError as exc:
            raise LogUnavailableError(f"{type(exc).__name__} ({url})") from None
        if response.status_code not in (200, 201):
            message = _problem(response)
            if args.json:
                emit_json({"ok": False, "status": response.status_code, "message": message})
            print(f"etch submit: refused: {message}", file=sys.stderr)
            return EXIT_FAILED
        try:
            result = response.json()
            if not isinstance(result, dict) or not isinstance(result.get("checkpoint"), str):
                raise ReceiptError("the answer is not a submission result")
            verifier = _log_verifier(client, result["checkpoint"])
            index, value, size, note, receipt_text, entry, duplicate = verify_result(
                result, event_cbor, signature, verifier
            )
        except (ValueError, ReceiptError) as exc:
            raise LogResponseError(f"the log's answer does not verify: {exc}") from None
        receipt = parse_receipt(receipt_text)
        if args.output:
            data = format_receipt(Receipt(index, receipt.proof, note, entry))
            atomic_write(Path(args.output), data, 0o644)
        if args.json:
            emit_json(
                {
                    "ok": True,
                    "index": index,
                    "leaf_hash": encode_base64(value),
                    "tree_size": size,
                    "duplicate": duplicate,
                    "jti": event["jti"],
                    "receipt_file": args.output,
                }
            )
        else:
            again = " (already logged: the original entry)" if duplicate else ""
            print(f"logged as entry {index}{again}; jti {event['jti']}")
            print(f"verified: signed checkpoint of size {size}, inclusion proof, entry bytes")
            if args.output:
                print(f"wrote {args.output}")
        return EXIT_OK

    return run_client_command("submit", args, body)
