"""``etch audit``: download every tile and entry of a log and recompute every hash and the root.

Verifies the log's checkpoint (signature, witness quorum, consistency with the trusted state),
checks every other checkpoint it can see for consistency with it (the previous audit's, each
policy witness's latest, and those given with --checkpoint), then reads every entry bundle and
every tile, recomputes each leaf hash, each tile and the root, and compares. Progress: a bar
with the time left on a terminal, plain lines otherwise. Resumable: an interrupted audit, or an
audit of a log that has grown since, continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from client.audit import Auditor, AuditProgress
from client.commands._common import (
    EXIT_OK,
    EXIT_USAGE,
    add_log_arguments,
    checkpoint_json,
    cosigner_text,
    emit_json,
    run_client_command,
)
from client.commands.monitor import default_state
from client.errors import ConfigurationError
from client.logclient import LogClient

__all__ = ["ProgressPrinter", "register"]

EPILOG = """examples:
  etch audit                                          # the make run log
  etch audit --log https://log.example.com --policy policy.txt --credential-file reader.cred
  etch audit --checkpoint seen-elsewhere.checkpoint --json
  etch audit --restart                                # forget earlier progress

exit status: 0 every hash verified, 1 a mismatch (evidence written) or log unreachable, 2 usage
"""


def register(subparsers: Any) -> None:
    """Add the ``audit`` subcommand."""
    parser = subparsers.add_parser(
        "audit",
        help="download and recompute a whole log",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_log_arguments(parser, http="lean")
    parser.add_argument(
        "--state", metavar="FILE", help="progress file (default STATE_DIR/audit/<origin>.json)"
    )
    parser.add_argument("--restart", action="store_true", help="ignore earlier progress")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="another signed checkpoint of the log to check (repeatable)",
    )
    parser.add_argument(
        "--no-witnesses", action="store_true", help="do not ask the policy's witnesses"
    )
    parser.add_argument(
        "--window", type=int, default=16, metavar="N", help="tiles fetched ahead (default 16)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=2,
        metavar="N",
        help="keep-alive connections for tiles and entries (default 2)",
    )
    parser.add_argument(
        "--pipeline",
        type=int,
        default=8,
        metavar="N",
        help="HTTP/1.1 requests in flight per connection (default 8; 1 turns pipelining off)",
    )
    parser.set_defaults(func=_run)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressPrinter:
    """Shows audit progress: a redrawn bar with the time left on a terminal, else lines.

    Plain lines come at most every ``every`` seconds (and at the end).
    """

    def __init__(self, out: TextIO, *, tty: bool | None = None, every: float = 10.0) -> None:
        """Write to ``out``; ``tty`` overrides the terminal detection."""
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.every = every
        self._last: float | None = None

    def __call__(self, progress: AuditProgress) -> None:
        """Show one progress report."""
        fraction = progress.done / progress.total if progress.total else 1.0
        if self.tty:
            width = 30
            filled = int(width * fraction)
            bar = "#" * filled + "." * (width - filled)
            self.out.write(
                f"\r[{bar}] {fraction:6.1%} {progress.done:,}/{progress.total:,} entries "
                f"{progress.rate:,.0f}/s ETA {_duration(progress.eta)} "
            )
            if progress.done >= progress.total:
                self.out.write("\n")
            self.out.flush()
            return
        now = time.monotonic()
        recent = self._last is not None and now - self._last < self.every
        if progress.done < progress.total and recent:
            return
        self._last = now
        self.out.write(
            f"audit: {progress.done}/{progress.total} entries ({fraction:.1%}), "
            f"{progress.rate:.0f}/s, about {_duration(progress.eta)} left\n"
        )
        self.out.flush()


def _checkpoints(paths: list[str]) -> list[tuple[str, bytes]]:
    seen = []
    for path in paths:
        try:
            seen.append((f"file {path}", Path(path).read_bytes()[: 64 * 1024]))
        except OSError as exc:
            raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    return seen


def _run(args: argparse.Namespace) -> int:
    for name in ("window", "connections", "pipeline"):
        if getattr(args, name) < 1:
            print(f"etch audit: --{name} must be at least 1", file=sys.stderr)
            return EXIT_USAGE
    try:
        extra = _checkpoints(args.checkpoint)
    except ConfigurationError as exc:
        print(f"etch audit: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def body(client: LogClient) -> int:
        path = Path(args.state) if args.state else default_state(args, client, "audit")
        if args.restart:
            path.unlink(missing_ok=True)
        auditor = Auditor(
            client,
            path,
            progress=ProgressPrinter(sys.stderr),
            checkpoints=extra,
            window=args.window,
            witnesses=not args.no_witnesses,
            connections=args.connections,
            pipeline=args.pipeline,
        )
        report = await auditor.run()
        checkpoint = report.checkpoint
        if args.json:
            emit_json(
                {
                    "ok": True,
                    "checkpoint": checkpoint_json(checkpoint),
                    "entries": report.entries,
                    "resumed_from": report.resumed_from,
                    "tiles_read": report.tiles,
                    "seconds": round(report.elapsed, 3),
                    "entries_per_second": round(report.rate, 1),
                    "checkpoints": [
                        {"source": c.source, "tree_size": c.tree_size, "status": c.status}
                        for c in report.checkpoints
                    ],
                }
            )
        else:
            resumed = (
                f" (resumed at entry {report.resumed_from})" if report.resumed_from else ""
            )
            print(
                f"audit passed: {checkpoint.origin} at size {checkpoint.tree_size}, every entry, "
                f"tile and the root recomputed{resumed}"
            )
            print(f"root hash  {checkpoint.root_hash.hex()}")
            print(f"cosigned   {cosigner_text(checkpoint, client.policy)}")
            print(f"read       {report.tiles} tiles and bundles in {report.elapsed:.1f} s")
            for check in report.checkpoints:
                print(f"checkpoint {check.source}: size {check.tree_size}, {check.status}")
        return EXIT_OK

    return run_client_command("audit", args, body, compress=False)
