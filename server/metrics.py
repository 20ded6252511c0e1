"""Prometheus metrics of one log service.

Each application owns its own registry (no process globals), so several logs or test apps can
live in one process. Label values are fixed vocabularies (problem types, routes, witness names),
never request data, so nothing a client sends, let alone a secret, reaches a metric.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "LogMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class LogMetrics:
    """The counters, gauges and histograms a log exports at ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submissions = Counter(
            "etch_submissions",
            "Entries submitted, by outcome (new, duplicate, refused).",
            ["outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "etch_batch_entries",
            "New entries committed per sequencing round.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.sequencing_latency = Histogram(
            "etch_sequencing_seconds",
            "Time from a submission's arrival to its committed receipt.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tree_size = Gauge("etch_tree_size", "Size of the latest signed tree.", registry=r)
        self.published_size = Gauge(
            "etch_published_tree_size",
            "Size of the latest published (cosigned where a policy asks) checkpoint.",
            registry=r,
        )
        self.errors = Counter(
            "etch_errors",
            "Problem answers by problem type.",
            ["type"],
            registry=r,
        )
        self.cosignatures = Counter(
            "etch_witness_cosignatures",
            "Cosignatures collected, by witness.",
            ["witness"],
            registry=r,
        )
        self.witness_failures = Counter(
            "etch_witness_failures",
            "Failed add-checkpoint attempts, by witness and reason.",
            ["witness", "reason"],
            registry=r,
        )
        self.witness_size = Gauge(
            "etch_witness_cosigned_size",
            "Largest tree size each witness has cosigned.",
            ["witness"],
            registry=r,
        )

    def render(self) -> bytes:
        """Return the Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
