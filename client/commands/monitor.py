"""``etch monitor``: follow a log, verify every checkpoint and entry, alert on OAuth invariants.

Each round verifies the new checkpoint (signature, witness quorum, consistency with the trusted
state), reads every new entry, checks it against the tree, and applies the rules; each alert is
one JSON line on standard output:

  {"alert":"revoked-token-used","origin":"...","index":812,"log_time":1767225600123,
   "event_type":"token-refreshed","detail":"...","token_ref":"...","related_index":640}

Rules: revoked-token-used, refresh-token-reuse, issued-after-consent-revoked,
issued-after-client-disabled, failed-login-burst, iat-skew (see client.monitor). The monitor's
state (what it verified, its rule memory) is saved after every round; a restarted monitor
resumes where it stopped. A log that misbehaves ends the monitor with status 1, an alert line
"log-misbehaviour" and an evidence file. Progress goes to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import sys
from pathlib import Path
from typing import Any

from client.commands._common import (
    EXIT_OK,
    EXIT_USAGE,
    add_log_arguments,
    emit_json,
    run_client_command,
    state_dir,
)
from client.errors import ConfigurationError, LogMisbehaviour
from client.logclient import LogClient
from client.monitor import Alert, Monitor, MonitorConfig, StepResult

__all__ = ["register"]

EPILOG = """examples:
  etch monitor                                        # follow the make run log
  etch monitor --log https://log.example.com --policy policy.txt --credential-file reader.cred
  etch monitor --once --from-now                      # catch up once, starting at today's size
  etch monitor --failed-login-threshold 20 --failed-login-window 300 >> alerts.jsonl

exit status: 0 stopped (or --once done), 1 the log misbehaved or could not be used, 2 usage
"""


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or text.startswith("0"):
        raise argparse.ArgumentTypeError("a positive decimal integer")
    return int(text)


def register(subparsers: Any) -> None:
    """Add the ``monitor`` subcommand."""
    parser = subparsers.add_parser(
        "monitor",
        help="follow a log, verify everything, alert on OAuth invariants (JSON lines)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_log_arguments(parser, http="lean")
    parser.add_argument(
        "--state", metavar="FILE", help="monitor state (default STATE_DIR/monitor/<origin>.json)"
    )
    parser.add_argument("--interval", type=_positive, default=10, metavar="S", help="poll period")
    parser.add_argument("--once", action="store_true", help="catch up once, then exit")
    parser.add_argument(
        "--from-now", action="store_true", help="without a state, start at the current size"
    )
    defaults = MonitorConfig()
    parser.add_argument(
        "--failed-login-threshold",
        type=_positive,
        default=defaults.failed_login_threshold,
        metavar="N",
    )
    parser.add_argument(
        "--failed-login-window", type=_positive, default=defaults.failed_login_window, metavar="S"
    )
    parser.add_argument(
        "--max-iat-skew", type=_positive, default=defaults.max_iat_skew, metavar="S"
    )
    parser.add_argument(
        "--retention-days", type=_positive, default=defaults.retention // 86400, metavar="D"
    )
    parser.set_defaults(func=_run)


def default_state(args: argparse.Namespace, client: LogClient, kind: str) -> Path:
    """Return ``STATE_DIR/<kind>/<hex SHA-256(origin)>.json`` for the policy's only log.

    Raises ConfigurationError when the policy lists several logs (give the file).
    """
    if len(client.policy.logs) != 1:
        raise ConfigurationError(f"the policy lists several logs: give --state for the {kind}")
    origin = client.policy.logs[0].verifier.name
    name = hashlib.sha256(origin.encode("utf-8")).hexdigest() + ".json"
    return state_dir(args) / kind / name


def _run(args: argparse.Namespace) -> int:
    try:
        config = MonitorConfig(
            failed_login_threshold=args.failed_login_threshold,
            failed_login_window=args.failed_login_window,
            max_iat_skew=args.max_iat_skew,
            retention=args.retention_days * 86400,
        )
    except ConfigurationError as exc:
        print(f"etch monitor: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def body(client: LogClient) -> int:
        path = Path(args.state) if args.state else default_state(args, client, "monitor")

        def emit(alert: Alert) -> None:
            emit_json(alert.to_json(monitor.origin))
            sys.stdout.flush()

        def on_step(result: StepResult) -> None:
            if result.entries or result.first_size == 0:
                print(
                    f"etch monitor: verified size {result.first_size} -> {result.tree_size} "
                    f"({result.entries} entries, {len(result.alerts)} alerts)",
                    file=sys.stderr,
                )

        monitor = Monitor(client, path, config, emit=emit, from_now=args.from_now)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        try:
            await monitor.run(interval=args.interval, once=args.once, stop=stop, on_step=on_step)
        except LogMisbehaviour as exc:
            emit_json(
                {
                    "alert": "log-misbehaviour",
                    "origin": (exc.evidence or {}).get("origin") or monitor.origin,
                    "kind": exc.kind,
                    "detail": str(exc),
                    "evidence": str(exc.evidence_path) if exc.evidence_path else None,
                }
            )
            sys.stdout.flush()
            raise
        return EXIT_OK

    return run_client_command("monitor", args, body)
