"""The process's Prometheus metrics (issue 21), declared once; docs/OBSERVABILITY.md lists them.

Labels are bounded sets chosen here (route templates, methods, status codes, reasons,
strategies): never a tenant, user or document id, nor any value a client sent, so a label can
neither carry PHI nor grow without bound. With several worker processes set
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode): each worker writes its
values there and GET /metrics adds them up.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

# Request latencies from 5 ms to 10 s; the database ones start lower.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DATABASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)

HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_SERVER_ERRORS = Counter(
    "http_server_errors",
    "HTTP requests answered with a 5xx status, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from the request's arrival to its last response byte, by method and route template.",
    ["method", "route"],
    buckets=_REQUEST_BUCKETS,
)
DB_POOL_IN_USE = Gauge(
    "db_pool_connections_in_use",
    "Database connections checked out of the app's pools (all engines of the process).",
    multiprocess_mode="livesum",
)
DB_POOL_ACQUIRE = Histogram(
    "db_pool_acquire_seconds",
    "Time a tenant transaction waited for its connection (pool wait, plus connect if new).",
    buckets=_DATABASE_BUCKETS,
)
RATE_LIMITED = Counter(
    "rate_limited_requests",
    "Requests refused with 429, by reason (tenant_rate, tenant_concurrency,"
    " refused_identity_rate, refused_identity_concurrency, tenant_export_running,"
    " export_concurrency).",
    ["reason"],
)
SEARCH_STRATEGY = Counter(
    "vector_search_strategy",
    "Similarity searches by the strategy the database chose (exact, tenant_index, ...).",
    ["strategy"],
)
AUDIT_INSERT = Histogram(
    "audit_insert_seconds",
    "Time to insert one audit row (the hash-chain trigger included).",
    buckets=_DATABASE_BUCKETS,
)
IDEMPOTENCY_OUTCOMES = Counter(
    "idempotency_key_requests",
    "Writes sent with an Idempotency-Key, by outcome (recorded, replayed,"
    " idempotency_key_in_flight, idempotency_key_reused).",
    ["outcome"],
)
JOB_QUEUE_DEPTH = Gauge(
    "job_queue_depth",
    "Jobs waiting, by queue name. The extension point for the job queue: its worker calls"
    " set_job_queue_depth(queue, depth) after each poll.",
    ["queue"],
    multiprocess_mode="livemax",
)


def set_job_queue_depth(queue: str, depth: int) -> None:
    """Report how many jobs wait in `queue` (a fixed name chosen in code, never a tenant's)."""
    JOB_QUEUE_DEPTH.labels(queue=queue).set(depth)


def exposition(multiprocess_dir: Path | None) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format and its content type; all workers' when
    `multiprocess_dir` (PROMETHEUS_MULTIPROC_DIR) is set."""
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=str(multiprocess_dir)
        )
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
