"""Pure parts of the explorer: escaping, proof geometry, metric summaries, sign-in sessions."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import pytest

from merkle.hashing import leaf_hash, node_hash
from merkle.tree import (
    Node,
    build_consistency_proof,
    build_inclusion_proof,
    consistency_nodes,
    inclusion_nodes,
    root_from_hashes,
)
from server.explorer.access import SessionStore
from server.explorer.markup import Markup, escape, join, page, render
from server.explorer.stats import (
    RateMeter,
    counter_value,
    histogram_buckets,
    latency_summary,
)
from server.explorer.svg import (
    LeafRange,
    consistency_picture,
    consistency_ranges,
    growth_chart,
    inclusion_picture,
    inclusion_steps,
    largest_power_of_two_below,
    path_hashes,
)
from server.metrics import LogMetrics

HOSTILE = '<script>alert("x")</script> & \' $title ${body}'


def test_render_escapes_values_and_keeps_markup() -> None:
    out = render('<p title="$a">$b</p>$c', a=HOSTILE, b=HOSTILE, c=Markup("<br>"))
    assert "<script>" not in out
    assert '"x"' not in out
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27; $title ${body}" in out
    assert out.endswith("<br>")
    assert escape(None) == ""
    assert join(["<a>", Markup("<b>")], " ") == "&lt;a&gt; <b>"
    with pytest.raises(KeyError):
        render("$missing")


def test_page_shell_escapes_every_slot() -> None:
    document = page(
        title=HOSTILE, body=Markup("<p>ok</p>"), site=HOSTILE, home='/"x', css='/"c', footer=HOSTILE
    )
    assert "<script>" not in document
    assert 'href="/&quot;x"' in document
    assert "<p>ok</p>" in document


def _mth(leaves: list[bytes]) -> bytes:
    """Naive RFC 6962 §2.1 MTH over leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = largest_power_of_two_below(len(leaves))
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _tree(size: int) -> list[bytes]:
    return [leaf_hash(b"leaf %d" % i) for i in range(size)]


def _nodes(leaves: list[bytes], nodes: Sequence[Node]) -> list[bytes]:
    """The hash of each node, computed naively from the leaf hashes."""
    return [_mth(leaves[n.index << n.level : (n.index + 1) << n.level]) for n in nodes]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 13, 33])
def test_inclusion_steps_name_the_subtree_of_each_proof_hash(size: int) -> None:
    leaves = _tree(size)
    for index in range(size):
        steps = inclusion_steps(index, size)
        proof = build_inclusion_proof(
            index, size, _nodes(leaves, list(inclusion_nodes(index, size)))
        )
        assert len(steps) == len(proof)
        for step, value in zip(steps, proof, strict=True):
            assert _mth(leaves[step.sibling.start : step.sibling.end]) == value
            assert step.path.start <= index < step.path.end
        assert path_hashes(leaves[index], steps, proof)[-1:] == ([_mth(leaves)] if steps else [])


def test_consistency_ranges_match_the_proof_for_every_pair() -> None:
    for second in range(1, 34):
        leaves = _tree(second)
        for first in range(0, second + 1):
            ranges = consistency_ranges(first, second)
            nodes = list(consistency_nodes(first, second))
            proof = build_consistency_proof(first, second, _nodes(leaves, nodes))
            assert [_mth(leaves[r.start : r.end]) for r in ranges] == proof, (first, second)


def test_geometry_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="below"):
        inclusion_steps(5, 5)
    with pytest.raises(ValueError, match="between"):
        consistency_ranges(6, 5)
    with pytest.raises(ValueError, match="at least 2"):
        largest_power_of_two_below(1)
    with pytest.raises(ValueError, match="one proof hash"):
        path_hashes(b"\0" * 32, inclusion_steps(0, 4), [])
    assert LeafRange(3, 4).label() == "leaf 3"
    assert LeafRange(0, 4).label() == "leaves 0–3"


def test_pictures_mark_the_root_and_cover_each_hash() -> None:
    leaves = _tree(6)
    proof = build_inclusion_proof(4, 6, _nodes(leaves, list(inclusion_nodes(4, 6))))
    root = root_from_hashes([_mth(leaves[:4]), _mth(leaves[4:])])
    good = inclusion_picture(4, 6, leaves[4], proof, root)
    assert 'class="node root ok"' in good
    assert good.count('class="node sibling"') == len(proof)
    bad = inclusion_picture(4, 6, leaves[4], proof, hashlib.sha256(b"other").digest())
    assert 'class="node root bad"' in bad
    with pytest.raises(ValueError, match="one proof hash"):
        inclusion_picture(4, 6, leaves[4], proof[1:], root)
    cons = consistency_picture(
        3, 6, build_consistency_proof(3, 6, _nodes(leaves, list(consistency_nodes(3, 6))))
    )
    assert cons.count('<g class="range') == len(consistency_ranges(3, 6))
    with pytest.raises(ValueError, match="length"):
        consistency_picture(3, 6, [])


def test_growth_chart_needs_two_times() -> None:
    assert "Not enough history" in growth_chart([(1000, 1)])
    chart = growth_chart([(2000, 5), (1000, 1), (3000, 9)])
    assert "<polyline" in chart
    assert "from 1 at 1970-01-01 00:00:01 UTC to 9 at 1970-01-01 00:00:03 UTC" in chart


def test_rate_meter_measures_over_its_window() -> None:
    now = [100.0]
    meter = RateMeter(horizon=10.0, spacing=1.0, clock=lambda: now[0])
    assert meter.observe(5).per_second is None
    now[0] = 102.0
    assert meter.observe(25).per_second == pytest.approx(10.0)
    now[0] = 120.0
    rate = meter.observe(45)
    assert rate.total == 45
    assert rate.per_second == pytest.approx(20 / 18)  # oldest kept sample is the one at 102
    now[0] = 140.0
    assert meter.observe(45).per_second == pytest.approx(0.0)


def test_latency_summary_and_metric_reading() -> None:
    summary = latency_summary([(0.01, 90), (0.1, 100), (math.inf, 100)], 0.5, 100)
    assert (summary.count, summary.mean, summary.p50, summary.p95) == (100, 0.005, 0.01, 0.1)
    assert latency_summary([], 0, 0).mean is None
    assert latency_summary([(0.01, 0), (math.inf, 4)], 40, 4).p99 == math.inf
    metrics = LogMetrics()
    metrics.submissions.labels("new").inc(7)
    metrics.submissions.labels("refused").inc(2)
    metrics.sequencing_latency.observe(0.003)
    metrics.sequencing_latency.observe(0.2)
    assert counter_value(metrics.submissions, outcome="new") == 7
    assert counter_value(metrics.submissions, outcome="duplicate") == 0
    buckets, total, count = histogram_buckets(metrics.sequencing_latency)
    assert count == 2
    assert total == pytest.approx(0.203)
    assert latency_summary(buckets, total, count).p50 == 0.005


def test_sessions_expire_are_bounded_and_end() -> None:
    now = [0.0]
    store = SessionStore(lifetime=10.0, capacity=2, clock=lambda: now[0])
    first = store.create("credential-a")
    second = store.create("credential-b")
    assert store.lookup(first) is not None
    assert first not in repr(store.__dict__)  # only hashes of session ids are kept
    store.create("credential-c")
    assert store.lookup(first) is None  # the oldest was dropped beyond capacity
    assert store.lookup(second) is not None
    store.end(second)
    assert store.lookup(second) is None
    third = store.create("credential-d")
    now[0] = 10.0
    assert store.lookup(third) is None
    assert store.lookup(None) is None
    assert store.lookup("x" * 500) is None
