"""The soak benchmark's machinery, run for a few seconds against real processes.

:func:`benchmarks.soak.run_soak` starts the log and three witnesses (2-of-3 policy) as child
processes, probes the flat-out rate, then runs submitters and verifying readers at half of it;
the series it returns must be sane (memory of every process, throughput, latencies, a cosigned
checkpoint) with no verification failure, and the outputs (JSON, CSV, Markdown; the plot only
when matplotlib is installed) must be written. :class:`benchmarks.soak.Knowledge` must refuse an
index handed out twice and two roots for one tree size.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from pathlib import Path

import pytest

from benchmarks.load import VerificationError
from benchmarks.soak import (
    CSV_COLUMNS,
    Knowledge,
    SoakConfig,
    format_markdown,
    format_summary,
    plot,
    run_soak,
    summary_figures,
    write_series,
)
from merkle.checkpoint import Checkpoint
from merkle.note import generate_key
from merkle.policy import parse_policy

_POLICY = parse_policy(f"log {generate_key('example.com/log')[1]}\nquorum none\n")


def test_a_short_soak_is_verified_and_its_series_is_sane(tmp_path: Path) -> None:
    config = SoakConfig(
        minutes=0.08,
        interval=1.2,
        probe_seconds=1.5,
        probe_warmup=0.5,
        probe_concurrency=16,
        read_rate=30.0,
    )
    result = run_soak(config, tmp_path / "work")

    assert result.verification_failures == 0, result.first_verification_failure
    assert not result.dead
    assert result.probe is not None
    assert result.probe.rate > 0
    assert result.rate == pytest.approx(max(result.probe.rate / 2, 1.0), abs=0.1)
    assert result.submitted > 0
    assert result.reads > 0
    assert set(result.reads_by_kind) >= {"checkpoint", "inclusion"}
    samples = result.samples
    assert len(samples) >= 3
    assert [s.t for s in samples] == sorted(s.t for s in samples)
    for sample in samples:
        assert sample.rss_log_mib > 10
        assert len(sample.rss_witness_mib) == 3
        assert all(m > 10 for m in sample.rss_witness_mib)
        assert 0 <= sample.cosigned_size <= sample.tree_size
        assert sample.cosign_lag == sample.tree_size - sample.cosigned_size
        assert sample.submit_p50_ms <= sample.submit_p95_ms <= sample.submit_p99_ms
        assert sample.submit_p99_ms <= sample.submit_max_ms
        assert sample.read_p50_ms <= sample.read_p99_ms <= sample.read_max_ms
        assert sample.verification_failures == 0
    assert sum(s.submitted for s in samples) == result.submitted
    assert sum(s.reads for s in samples) == result.reads
    tree_sizes = [s.tree_size for s in samples]
    assert tree_sizes == sorted(tree_sizes)
    assert samples[-1].cosigned_size > 0
    # Everything submitted in the soak (and the probe) was sequenced.
    assert samples[-1].tree_size >= result.submitted + result.probe.submitted

    out = tmp_path / "out"
    json_path, csv_path = write_series(result, out)
    body = json.loads(json_path.read_text(encoding="utf-8"))
    assert len(body["samples"]) == len(samples)
    assert body["summary"]["rss_log"]["start_mib"] == samples[0].rss_log_mib
    with csv_path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(samples) + 1
    figures = summary_figures(result)
    assert figures["final_tree_size"] == samples[-1].tree_size
    assert "verification failures: 0" in format_summary(result)
    assert "| log |" in format_markdown(result)
    if importlib.util.find_spec("matplotlib") is not None:
        plot(result, out / "soak.png")
        assert (out / "soak.png").read_bytes().startswith(b"\x89PNG")


def _checkpoint(size: int, fill: int) -> Checkpoint:
    return Checkpoint("example.com/log", size, bytes([fill]) * 32)


def test_knowledge_refuses_an_index_handed_out_twice() -> None:
    knowledge = Knowledge(_POLICY)
    knowledge.learn(5, b"\x01" * 32, 6)
    assert knowledge.leaf(5) == b"\x01" * 32
    assert knowledge.leaf(4) is None
    assert knowledge.known_index(random.Random(1), 6) == 5
    with pytest.raises(VerificationError, match="twice"):
        knowledge.learn(5, b"\x02" * 32, 7)


def test_knowledge_refuses_two_roots_for_one_size_and_asks_for_proofs() -> None:
    knowledge = Knowledge(_POLICY)
    assert knowledge.needs_proof(_checkpoint(10, 1)) is None
    knowledge.accept(_checkpoint(10, 1))
    assert knowledge.needs_proof(_checkpoint(10, 1)) is None
    with pytest.raises(VerificationError, match="two roots"):
        knowledge.needs_proof(_checkpoint(10, 2))
    assert knowledge.needs_proof(_checkpoint(12, 3)) == _checkpoint(10, 1)
    assert knowledge.needs_proof(_checkpoint(8, 3)) == _checkpoint(10, 1)
    knowledge.accept(_checkpoint(12, 3))
    knowledge.accept(_checkpoint(8, 4))
    assert knowledge.newest == _checkpoint(12, 3)
    assert [c.tree_size for c in knowledge.history] == [8, 10, 12]
