"""Benchmark of merkle.compact and merkle.tree against bare hashlib calls in the same run.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_tree [--repeats 7] [--leaves 1000000]
        [--proofs 2000] [--proof-repeats 21]

(a) The root of ``--leaves`` entries through :class:`merkle.compact.CompactRange`, leaf hashing
    included, against ``2 * --leaves`` bare ``hashlib.sha256(65 bytes).digest()`` calls (a tree
    of n leaves needs n leaf hashes and n - 1 node hashes). Target: ratio <= 1.5.
(b) Inclusion and consistency verification in a tree of 2**30 leaves (random indexes, random
    first sizes) against exactly the node hashes each verification needs, done bare
    (``sha256(b"\\x01" + left + right).digest()``). Target: ratio <= 1.5. The proofs are built
    for a tree whose leaves are all equal, so every node of a level has the same hash; hashing
    cost does not depend on the bytes hashed.

Each repeat runs the subject and then its baseline; the table gives the median times and the
median of the per-repeat ratios, so a change in machine load hits both sides of a ratio. Ratios
use the CPU time of this process (``time.process_time``), which leaves out the time spent
waiting for a core on a shared machine; the wall-clock ratio (``time.perf_counter``) is printed
beside it.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import itertools
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from unittest import mock

import merkle.tree
from merkle.compact import CompactRange
from merkle.hashing import leaf_hash, node_hash
from merkle.tree import (
    build_consistency_proof,
    build_inclusion_proof,
    consistency_nodes,
    inclusion_nodes,
    root_from_hashes,
    root_nodes,
    verify_consistency,
    verify_inclusion,
)

TREE_SIZE = 2**30

Case = tuple[Callable[[], object], Callable[[], object]]


@dataclass(frozen=True, slots=True)
class Timing:
    """Medians over the repeats: CPU seconds of each side, and the paired per-repeat ratios."""

    subject_cpu: float
    baseline_cpu: float
    cpu_ratio: float
    wall_ratio: float


def _median_pair(
    subject: Callable[[], object], baseline: Callable[[], object], repeats: int
) -> Timing:
    """Time ``subject`` then ``baseline``, ``repeats`` times; ratios are taken per pair."""
    subject_cpu, baseline_cpu, cpu_ratio, wall_ratio = [], [], [], []
    for _ in range(repeats):
        cpu, wall = [], []
        for fn in (subject, baseline):
            gc.collect()
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            fn()
            cpu.append(time.process_time() - cpu_start)
            wall.append(time.perf_counter() - wall_start)
        subject_cpu.append(cpu[0])
        baseline_cpu.append(cpu[1])
        cpu_ratio.append(cpu[0] / cpu[1])
        wall_ratio.append(wall[0] / wall[1])
    med = statistics.median
    return Timing(med(subject_cpu), med(baseline_cpu), med(cpu_ratio), med(wall_ratio))


def _compact_case(leaves: int) -> Case:
    entries = [i.to_bytes(8, "big") for i in range(leaves)]

    def subject() -> bytes:
        r = CompactRange()
        r.extend(map(leaf_hash, entries))
        return r.root()

    message = b"\x01" + bytes(64)
    sha256 = hashlib.sha256

    def baseline() -> None:
        for m in itertools.repeat(message, 2 * leaves):
            sha256(m).digest()

    return subject, baseline


def _level_hashes() -> list[bytes]:
    hashes = [leaf_hash(b"entry")]
    for _ in range(40):
        hashes.append(node_hash(hashes[-1], hashes[-1]))
    return hashes


def _count_hashes(verify: Callable[[], None]) -> int:
    """Return how many SHA-256 computations one call of ``verify`` makes."""
    with mock.patch.object(merkle.tree, "_sha256", wraps=hashlib.sha256) as sha256:
        verify()
    return sha256.call_count


def _bare_node_hashes(counts: Sequence[int]) -> Callable[[], None]:
    left, right = leaf_hash(b"left"), leaf_hash(b"right")
    sha256 = hashlib.sha256
    total = sum(counts)

    def baseline() -> None:
        for _ in itertools.repeat(None, total):
            sha256(b"\x01" + left + right).digest()

    return baseline


def _inclusion_case(proofs: int, rng: random.Random) -> tuple[Case, int]:
    level = _level_hashes()
    root = root_from_hashes([level[n.level] for n in root_nodes(TREE_SIZE)])
    cases = []
    for _ in range(proofs):
        index = rng.randrange(TREE_SIZE)
        nodes = inclusion_nodes(index, TREE_SIZE)
        proof = build_inclusion_proof(index, TREE_SIZE, [level[n.level] for n in nodes])
        cases.append((level[0], index, TREE_SIZE, proof, root))
    counts = [_count_hashes(functools.partial(verify_inclusion, *c)) for c in cases]

    def subject() -> None:
        for leaf, index, size, proof, root_hash in cases:
            verify_inclusion(leaf, index, size, proof, root_hash)

    return (subject, _bare_node_hashes(counts)), sum(counts)


def _consistency_case(proofs: int, rng: random.Random) -> tuple[Case, int]:
    level = _level_hashes()

    def root(size: int) -> bytes:
        return root_from_hashes([level[n.level] for n in root_nodes(size)])

    second_root = root(TREE_SIZE)
    cases = []
    for _ in range(proofs):
        first = rng.randrange(1, TREE_SIZE)
        nodes = consistency_nodes(first, TREE_SIZE)
        proof = build_consistency_proof(first, TREE_SIZE, [level[n.level] for n in nodes])
        cases.append((first, TREE_SIZE, root(first), second_root, proof))
    counts = [_count_hashes(functools.partial(verify_consistency, *c)) for c in cases]

    def subject() -> None:
        for first, second, first_root, root_hash, proof in cases:
            verify_consistency(first, second, first_root, root_hash, proof)

    return (subject, _bare_node_hashes(counts)), sum(counts)


def main(argv: Sequence[str] | None = None) -> None:
    """Run both benchmarks and print a table of medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--proofs", type=int, default=2000)
    parser.add_argument("--proof-repeats", type=int, default=21)
    args = parser.parse_args(argv)
    rng = random.Random(9162)

    rows: list[tuple[str, float, str, str, Timing]] = []
    subject, baseline = _compact_case(args.leaves)
    timing = _median_pair(subject, baseline, args.repeats)
    rows.append(
        (
            f"(a) root of {args.leaves:,} leaves, CompactRange",
            args.leaves / timing.subject_cpu,
            "leaves/s",
            f"{2 * args.leaves:,} bare sha256",
            timing,
        )
    )
    for name, make in (("inclusion", _inclusion_case), ("consistency", _consistency_case)):
        (subject, baseline), hashes = make(args.proofs, rng)
        timing = _median_pair(subject, baseline, args.proof_repeats)
        rows.append(
            (
                f"(b) {args.proofs:,} {name} proofs, size 2**30",
                args.proofs / timing.subject_cpu,
                "proofs/s",
                f"{hashes:,} bare node hashes",
                timing,
            )
        )

    print(
        f"medians of {args.repeats} (a) / {args.proof_repeats} (b) paired runs;"
        " CPU seconds of this process; ratio = subject / baseline, target <= 1.5"
    )
    print(
        f"{'benchmark':<42} {'cpu s':>7} {'rate':>17}   {'baseline':<26} {'cpu s':>7}"
        f" {'ratio':>6} {'wall ratio':>10}"
    )
    for name, rate, unit, base_name, t in rows:
        print(
            f"{name:<42} {t.subject_cpu:>7.3f} {rate:>8,.0f} {unit:<8}   {base_name:<26}"
            f" {t.baseline_cpu:>7.3f} {t.cpu_ratio:>6.2f} {t.wall_ratio:>10.2f}"
        )


if __name__ == "__main__":
    main()
