"""Prometheus metrics of ``mmx-fast serve`` (one registry per app, so several apps can live in a process).

Besides the model-side series (queue, batches, stages, explanations) the registry carries what an SRE pages
on (docs/design.md §6): the process's memory, CPU and file descriptors (prometheus_client's process and
platform collectors), HTTP requests in flight and open connections, the latency of every answer by route and
status (503 and 504 included), admission (bytes in flight, requests parsing), error and status series present
at zero before the first error, batch re-runs after a failing batch, and ``mmx_fast_build_info``.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
ERROR_KINDS = (
    "invalid",
    "too_large",
    "queue_full",
    "overloaded",
    "timeout",
    "cancelled",
    "unauthorized",
    "draining",
    "not_ready",
    "not_found",
    "store",
    "internal",
)
STATUSES = ("200", "401", "404", "413", "415", "422", "499", "500", "503", "504")


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch: int) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(
            registry=r
        )  # process_resident_memory_bytes, process_open_fds, process_cpu_seconds...
        PlatformCollector(registry=r)  # python_info
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
            "mmx_fast_requests", "finished explain requests by HTTP status", ["status"], registry=r
        )
        self.errors = Counter(
            "mmx_fast_errors", f"failed requests by kind ({', '.join(ERROR_KINDS)})", ["kind"], registry=r
        )
        for kind in ERROR_KINDS:  # present at zero, so that rate() and alerts work before the first error
            self.errors.labels(kind)
        for status in STATUSES:
            self.requests.labels(status)
        self.explanations = Counter("mmx_fast_explanations", "explanations computed", registry=r)
        self.batch_reruns = Counter(
            "mmx_fast_batch_reruns",
            "batches that raised and were re-run one request at a time (a poison request among good ones)",
            registry=r,
        )
        self.http_in_flight = Gauge(
            "mmx_fast_http_requests_in_flight", "HTTP requests being handled (all routes)", registry=r
        )
        self.connections = Gauge(
            "mmx_fast_http_connections", "open HTTP connections (uvicorn; 0 under Ray Serve)", registry=r
        )
        self.http_seconds = Histogram(
            "mmx_fast_http_request_seconds",
            "time from the request's arrival to its answer, by route and status (refusals included)",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "mmx_fast_admission_inflight_bytes",
            "request bytes held (bodies, then decoded images)",
            registry=r,
        )
        self.parsing = Gauge("mmx_fast_admission_parsing", "requests in the parse/decode stage", registry=r)
        self.build = Info("mmx_fast_build", "version, model, model type, dtype and device", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
