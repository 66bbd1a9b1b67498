"""Prometheus metrics, correct under several worker processes.

``python -m api`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports
prometheus_client, so each worker writes its samples to files there and ``/metrics``
aggregates all workers; without it (tests, flask run) the process registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "api_requests_total",
    "HTTP requests by endpoint, method and status",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "api_request_duration_seconds",
    "Request latency by endpoint and status",
    ["endpoint", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PREDICTIONS = Counter(
    "api_predictions_total", "Records predicted, by model name and version", ["model", "version"]
)
BATCH_ROWS = Counter(
    "api_batch_rows_total",
    "Rows through /batch-predict, by version and outcome",
    ["model", "version", "outcome"],
)
REGISTRY_READS = Counter(
    "api_registry_reads_total",
    "Reads of the active-version pointer (shared by concurrent requests)",
)
STALE_RESPONSES = Counter(
    "api_stale_responses_total", "Responses served while the registry database was unreachable"
)
CAPTURE_WRITTEN = Counter("api_capture_written_total", "Captured records written to inference_log")
CAPTURE_DROPPED = Counter(
    "api_capture_dropped_total", "Captured records dropped because the capture queue was full"
)
CAPTURE_FAILED = Counter(
    "api_capture_failed_total", "Captured records lost because the database refused the write"
)


def exposition() -> tuple[bytes, str]:
    """The metrics text of every worker (or of this process) and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


SHADOW_SCORED = Counter(
    "api_shadow_scored_total",
    "Records of answered requests scored by the shadow version",
    ["model"],
)
SHADOW_DROPPED = Counter(
    "api_shadow_dropped_total",
    "Copies for the shadow version dropped: its queue was full",
    ["model"],
)
