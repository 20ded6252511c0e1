"""Prometheus metrics of one witness, in a registry of its own (several witnesses can share a
process, as tests do).

* ``witness_http_requests_total{endpoint, status}``: answered requests by route and status;
* ``witness_cosignatures_total{origin}``: cosignatures issued;
* ``witness_refused_checkpoints_total{origin, reason}``: add-checkpoint refusals after the
  signature check (``reason`` is the error class);
* ``witness_evidence_records{origin}``: evidence records held (a gauge, loaded at start);
* ``witness_tree_size{origin}``: size of the latest cosigned checkpoint;
* ``witness_gossip_fetches_total{target, result}``: gossip fetches of logs and peers.

Only configured origins are used as label values, so the label sets stay bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

__all__ = ["CONTENT_TYPE", "WitnessMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Content type of the Prometheus text exposition format served at ``/metrics``."""


class WitnessMetrics:
    """The metric families of one witness (see the module docstring)."""

    def __init__(self) -> None:
        """Create the families in a fresh registry."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "witness_http_requests",
            "HTTP requests answered, by route and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.cosignatures = Counter(
            "witness_cosignatures",
            "Cosignatures issued, by origin.",
            ["origin"],
            registry=self.registry,
        )
        self.refused = Counter(
            "witness_refused_checkpoints",
            "add-checkpoint requests refused after the signature check, by origin and reason.",
            ["origin", "reason"],
            registry=self.registry,
        )
        self.evidence = Gauge(
            "witness_evidence_records",
            "Evidence records held against an origin.",
            ["origin"],
            registry=self.registry,
        )
        self.tree_size = Gauge(
            "witness_tree_size",
            "Tree size of the latest cosigned checkpoint, by origin.",
            ["origin"],
            registry=self.registry,
        )
        self.gossip = Counter(
            "witness_gossip_fetches",
            "Gossip fetches of log checkpoints and peer checkpoints, by target and result.",
            ["target", "result"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)
