"""Prometheus metrics of ``mmx-fast serve`` (one registry per app, so several apps can live in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch: int) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.queue_depth = Gauge("mmx_fast_queue_depth", "requests waiting for the model", registry=r)
        self.in_flight = Gauge(
            "mmx_fast_batch_in_flight", "requests in the batch the model is running", registry=r
        )
        buckets = sorted(
            {1, 2, 4, 8, 16, 32, 64, 128, max_batch} & set(range(1, max_batch + 1)) | {max_batch}
        )
        self.batch_size = Histogram(
            "mmx_fast_batch_size", "requests per explain_batch call", buckets=buckets, registry=r
        )
        self.stage_seconds = Histogram(
            "mmx_fast_stage_seconds",
            "latency per stage: queue (waiting for a batch), decode (image), generate, forward, "
            "attribution (per request's share of its batch), encode (response), total (arrival to response)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "mmx_fast_requests", "finished /v1/explain requests by HTTP status", ["status"], registry=r
        )
        self.errors = Counter(
            "mmx_fast_errors",
            "failed requests by kind (invalid, too_large, queue_full, timeout, cancelled, unauthorized, "
            "draining, internal)",
            ["kind"],
            registry=r,
        )
        self.explanations = Counter("mmx_fast_explanations", "explanations computed", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
