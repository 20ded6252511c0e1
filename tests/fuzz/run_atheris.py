"""Run the fuzz targets under atheris (libFuzzer, coverage guided) for a bounded time.

Usage::

    python -m tests.fuzz.run_atheris <target>|all [--seconds N] [--artifacts DIR]
    python -m tests.fuzz.run_atheris --list

One target runs in this process: the project's packages are instrumented as they are imported,
the target's seed corpus (:mod:`tests.fuzz.seeds`) is written to a fresh corpus directory, and
libFuzzer mutates it for ``N`` seconds (``-max_total_time``; one input may take at most 10 s,
``-timeout``). A crash (any exception the target does not allow, or a timeout) stops the run:
libFuzzer writes the input to ``<artifacts>/<target>/crash-<sha1>`` and this exits non-zero.

``all`` runs every target in its own child process, one after the other, and prints a table of
targets, seconds, executions and outcome; it exits 1 if any target crashed. Exit 2 is a usage
error (an unknown target, or atheris not installed: ``make fuzz`` installs the ``fuzz`` extra).
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

DEFAULT_SECONDS = 20
DEFAULT_ARTIFACTS = Path(tempfile.gettempdir()) / "etch-fuzz"
_INSTRUMENTED = (
    "merkle",
    "server.codec",
    "server.events",
    "server.ingest",
    "server.jose",
    "server.leaves",
    "witness.core",
    "witness.evidence",
    "client.cbor",
    "client.logclient",
)
"""The modules whose coverage guides the fuzzer: the parsers and what they call."""
_RUNS = re.compile(r"Done (\d+) runs in (\d+) second")


def _atheris() -> ModuleType:
    """Import atheris, or exit 2 saying how to install it."""
    try:
        return importlib.import_module("atheris")
    except ImportError:
        print("atheris is not installed: 'make fuzz' installs the fuzz extra", file=sys.stderr)
        raise SystemExit(2) from None


def _target_names() -> list[str]:
    from tests.fuzz.targets import TARGETS

    return sorted(TARGETS)


def run_one(name: str, seconds: int, artifacts: Path) -> None:
    """Fuzz target ``name`` in this process for ``seconds`` seconds (never returns)."""
    atheris = _atheris()
    with atheris.instrument_imports(include=list(_INSTRUMENTED)):
        from tests.fuzz.targets import TARGETS
    if name not in TARGETS:
        print(f"unknown target {name!r}; see --list", file=sys.stderr)
        raise SystemExit(2)
    target = TARGETS[name]
    corpus = Path(tempfile.mkdtemp(prefix=f"etch-fuzz-{name}-"))
    for number, seed in enumerate(target.seeds):
        (corpus / f"seed-{number}").write_bytes(seed)
    out = artifacts / name
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-max_len=8192",
        f"-artifact_prefix={out}/",
        "-print_final_stats=1",
    ]
    atheris.Setup(argv, target)
    atheris.Fuzz()


def run_all(names: Sequence[str], seconds: int, artifacts: Path) -> int:
    """Fuzz each target in a child process; print a summary; return 1 if any crashed."""
    rows: list[tuple[str, str, str, str]] = []
    failed = False
    for name in names:
        started = time.monotonic()
        command = [sys.executable, "-m", "tests.fuzz.run_atheris", name, "--seconds", str(seconds)]
        command += ["--artifacts", str(artifacts)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        elapsed = time.monotonic() - started
        match = _RUNS.search(result.stderr)
        runs = match.group(1) if match else "?"
        outcome = "ok" if result.returncode == 0 else f"CRASH (exit {result.returncode})"
        if result.returncode != 0:
            failed = True
            sys.stderr.write(result.stderr[-6000:])
            crashes = sorted((artifacts / name).glob("*-*"))
            if crashes:
                print(f"{name}: input in {crashes[-1]}", file=sys.stderr)
        rows.append((name, f"{elapsed:.0f}", runs, outcome))
        print(f"{name:20} {elapsed:6.0f} s {runs:>10} runs  {outcome}", flush=True)
    total = sum(int(r[2]) for r in rows if r[2].isdigit())
    print(f"{len(rows)} targets, {total} executions, {'CRASHES' if failed else 'no crash'}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one target or all of them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("target", nargs="?", help="a target name, or 'all'")
    parser.add_argument("--seconds", type=int, default=DEFAULT_SECONDS)
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--list", action="store_true", help="print the target names")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(_target_names()))
        return 0
    if args.target is None or args.seconds <= 0:
        parser.print_usage(sys.stderr)
        return 2
    if args.target == "all":
        _atheris()
        return run_all(_target_names(), args.seconds, args.artifacts)
    run_one(args.target, args.seconds, args.artifacts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
