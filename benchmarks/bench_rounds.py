"""Benchmark: the CPU a sequencing round costs, by round size, without HTTP.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_rounds [--sizes 1,16,64,256] [--rounds 300]
        [--work-dir DIR] [--json FILE]

For each size ``n`` it starts a log service (:class:`server.log.LogService` on SQLite, the
embedded default, in a fresh directory), then submits ``--rounds`` groups of ``n`` single-event
submissions: each group concurrently (``n`` awaiting submitters, as ``n`` HTTP clients would
be), the next group once the whole group is answered. A batch period far longer than a round
and a batch size above ``n`` make each group exactly one round, which starts once the queue is
quiet for the sequencer's idle wait (checked: the run fails otherwise). Every answer's
inclusion proof is checked against its signed checkpoint after the timed part.

Reported per size: CPU of the whole process (every thread: the event loop, SQLite's worker
threads) per round and per entry, and wall time per round (the idle wait included); then the
least-squares line ``CPU per round = fixed + n * per entry`` over the sizes. The service's own
work is all there is: no HTTP, no JSON, no client. What a submission over HTTP costs on top is
the server benchmark's business (:mod:`benchmarks.bench_server`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from merkle.checkpoint import Checkpoint, open_checkpoint
from merkle.hashing import leaf_hash
from merkle.tree import verify_inclusion
from server.keys import load_or_create_log_key
from server.log import LogService
from server.sequencer import Sequenced, Submission
from server.storage import open_storage

ORIGIN = "bench.example/rounds"
ENTRY_PAD = b"x" * 300  # about the size of the load tool's events once encoded


@dataclass(frozen=True, slots=True)
class RoundCost:
    """What ``rounds`` rounds of ``size`` entries cost."""

    size: int
    rounds: int
    cpu_ms_per_round: float
    wall_ms_per_round: float
    cpu_ms_per_entry: float


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _submission(number: int) -> Submission:
    data = b"round entry %d " % number + ENTRY_PAD
    return Submission(data, leaf_hash(data))


async def measure(size: int, rounds: int, data_dir: Path) -> RoundCost:
    """Run ``rounds`` rounds of ``size`` submissions on a fresh SQLite log in ``data_dir``.

    Raises RuntimeError when a group took other than exactly one round, or an answer's proof
    does not verify.
    """
    key = load_or_create_log_key(data_dir, ORIGIN)
    service = LogService(
        open_storage(f"sqlite://{data_dir / 'log.db'}"),
        key.signer,
        ORIGIN,
        batch_size=size + 1,
        batch_period=10.0,
    )
    await service.start()
    try:
        counter = 0

        async def group() -> list[tuple[bytes, Sequenced]]:
            nonlocal counter
            subs = [_submission(counter + i) for i in range(size)]
            counter += size
            answers = await asyncio.gather(*(service.submit([s]) for s in subs))
            return [(s.data, a) for s, (a,) in zip(subs, answers, strict=True)]

        await group()  # warm-up, untimed
        first_round = service.sequencer.rounds
        results: list[tuple[bytes, Sequenced]] = []
        cpu, wall = _cpu_seconds(), time.perf_counter()
        for _ in range(rounds):
            results += await group()
        cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
        taken = service.sequencer.rounds - first_round
        if taken != rounds:
            raise RuntimeError(f"{rounds} groups of {size} took {taken} rounds")
        verifier = key.signer.verifier()
        checkpoints: dict[bytes, Checkpoint] = {}  # each signed note verified once
        for data, result in results:
            checkpoint = checkpoints.get(result.checkpoint)
            if checkpoint is None:
                checkpoint, _, _ = open_checkpoint(result.checkpoint, verifier)
                checkpoints[result.checkpoint] = checkpoint
            verify_inclusion(
                leaf_hash(data), result.index, result.tree_size, result.proof, checkpoint.root_hash
            )
    finally:
        await service.stop()
    return RoundCost(
        size=size,
        rounds=rounds,
        cpu_ms_per_round=1000 * cpu / rounds,
        wall_ms_per_round=1000 * wall / rounds,
        cpu_ms_per_entry=1000 * cpu / (rounds * size),
    )


def fit(costs: Sequence[RoundCost]) -> tuple[float, float]:
    """Return ``(fixed, per_entry)`` ms of the least-squares line through CPU per round.

    Requires at least two distinct sizes. Raises ValueError otherwise.
    """
    sizes = [c.size for c in costs]
    if len(set(sizes)) < 2:
        raise ValueError("a line needs at least two round sizes")
    mean_x = sum(sizes) / len(sizes)
    mean_y = sum(c.cpu_ms_per_round for c in costs) / len(costs)
    slope = sum((c.size - mean_x) * (c.cpu_ms_per_round - mean_y) for c in costs) / sum(
        (x - mean_x) ** 2 for x in sizes
    )
    return mean_y - slope * mean_x, slope


def format_table(costs: Sequence[RoundCost]) -> str:
    """Return the Markdown table of ``costs`` and, with two sizes or more, the fitted line."""
    lines = [
        "| entries per round | rounds | CPU ms per round | wall ms per round | CPU ms per entry |",
        "|---|---|---|---|---|",
    ]
    for c in costs:
        lines.append(
            f"| {c.size} | {c.rounds} | {c.cpu_ms_per_round:.2f} | {c.wall_ms_per_round:.2f} |"
            f" {c.cpu_ms_per_entry:.3f} |"
        )
    if len({c.size for c in costs}) >= 2:
        fixed, per_entry = fit(costs)
        lines.append("")
        lines.append(f"CPU per round ~ {fixed:.2f} ms + {per_entry:.3f} ms per entry")
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sizes: {text!r}") from None
    if not sizes or any(not 1 <= s <= 999 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must lie in 1..999")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each size in turn; print the table (and write ``--json``). Exit status 0."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_rounds")
    parser.add_argument("--sizes", type=_sizes, default=[1, 16, 64, 256])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--work-dir", type=Path, help="keep the data here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    base = args.work_dir or Path(tempfile.mkdtemp(prefix="etch-rounds-"))
    costs = []
    for size in args.sizes:
        data_dir = base / f"size-{size}"
        data_dir.mkdir(parents=True, exist_ok=True)
        costs.append(asyncio.run(measure(size, args.rounds, data_dir)))
        print(format_table(costs[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(format_table(costs))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(c) for c in costs], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
