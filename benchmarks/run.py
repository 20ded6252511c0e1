"""``make bench``: run every benchmark in turn, each as its own process, and print its report.

Each benchmark measures its own baseline in the same run (these machines are noisy); the figures
and the machine they were taken on are recorded in ``benchmarks/RESULTS.md``. Pass benchmark
names to run only those, e.g. ``python -m benchmarks.run tree notes``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence

BENCHMARKS: dict[str, list[str]] = {
    "tree": ["benchmarks.bench_tree"],
    "notes": ["benchmarks.bench_notes"],
    "codec": ["benchmarks.bench_codec"],
    "storage": ["benchmarks.bench_storage", "--backend", "both"],
    "rounds": ["benchmarks.bench_rounds"],
    "emitter": ["benchmarks.bench_emitter"],
    "ingest": ["benchmarks.bench_ingest"],
    "witness": ["benchmarks.bench_witness", "--http"],
    "publish": ["benchmarks.bench_publish"],
    "client": ["benchmarks.bench_client"],
    "server": ["benchmarks.bench_server"],
}
"""Benchmark name -> module and arguments, cheapest first."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named benchmarks (all by default); return 1 if any of them failed."""
    names = list(argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    failed = []
    for name in names:
        print(f"== {name}: python -m {' '.join(BENCHMARKS[name])}", flush=True)
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", *BENCHMARKS[name]], check=False)
        print(f"== {name}: exit {result.returncode} after {time.monotonic() - start:.0f} s\n")
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print("benchmarks that failed or missed a target: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
