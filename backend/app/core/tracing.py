"""OpenTelemetry traces (issue 21): off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (or a test or
benchmark hands in an exporter); FastAPI, SQLAlchemy (psycopg below it), httpx and the AWS
clients (aiobotocore) instrumented; nothing that can carry PHI leaves the process.

The last line of defence is `PhiSafeSpanExporter`, which every exporter is wrapped in: a span
leaves with only the attributes of `ALLOWED_SPAN_ATTRIBUTES` (docs/OBSERVABILITY.md says why
each is safe), exception events keep only the exception's type, and a status keeps no
description. So a new library version that adds an attribute (a URL with a query string, a
client address, an exception message quoting a row) cannot leak it: it is dropped.

The tracer provider is one per process (like the OTel globals the library instrumentations
use); `configure_tracing` adds each exporter it is given to it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import NoOpUpDownCounter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Status
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings

TENANT_ID_ATTRIBUTE = "tenant.id"

# Every attribute a span may leave the process with (both the old and the stable HTTP
# semantic conventions' names). Not here, so dropped: URLs, targets, paths and query strings
# (ids and filter values), client and peer addresses, user agents, header values, SQL
# parameters (never recorded anyway), exception messages and stack traces.
ALLOWED_SPAN_ATTRIBUTES = frozenset(
    {
        # HTTP server and client (FastAPI, httpx)
        "http.method",
        "http.request.method",
        "http.route",
        "http.status_code",
        "http.response.status_code",
        "http.scheme",
        "url.scheme",
        "http.flavor",
        "network.protocol.version",
        "server.address",
        "server.port",
        "net.host.port",
        "error.type",
        "asgi.event.type",
        # SQL (SQLAlchemy): the statement with placeholders, never its parameters
        "db.system",
        "db.system.name",
        "db.name",
        "db.namespace",
        "db.statement",
        "db.query.text",
        "db.operation",
        "db.operation.name",
        "db.user",
        "net.peer.name",
        "net.peer.port",
        # AWS (aiobotocore): which API, where, and its request id
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "aws.region",
        "cloud.region",
        "aws.request_id",
        "retry_attempts",
        # Ours, only when OTEL_SPAN_TENANT_ID=true
        TENANT_ID_ATTRIBUTE,
    }
)
_ALLOWED_EVENT_ATTRIBUTES = frozenset({"exception.type", "exception.escaped"})

_lock = threading.Lock()
_provider: TracerProvider | None = None


def _allowed(attributes: Any, allowed: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in (attributes or {}).items() if key in allowed}


def phi_safe(span: ReadableSpan) -> ReadableSpan:
    """A copy of `span` with only allowed attributes, event attributes and no status text."""
    events = [
        Event(event.name, _allowed(event.attributes, _ALLOWED_EVENT_ATTRIBUTES), event.timestamp)
        for event in span.events
    ]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_allowed(span.attributes, ALLOWED_SPAN_ATTRIBUTES),
        events=events,
        links=[Link(link.context) for link in span.links],
        kind=span.kind,
        status=Status(span.status.status_code),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class PhiSafeSpanExporter(SpanExporter):
    """Export through `inner` only what `phi_safe` keeps of each span."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Filter, then hand the spans on."""
        return self.inner.export([phi_safe(span) for span in spans])

    def shutdown(self) -> None:
        """Shut the inner exporter down."""
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Flush the inner exporter."""
        return self.inner.force_flush(timeout_millis)


def _otlp_exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Like the SDK's own reading of OTEL_EXPORTER_OTLP_ENDPOINT: the base URL of the signals.
    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def _process_provider(settings: Settings) -> TracerProvider:
    """The process's provider, made (and the client libraries instrumented) on first use."""
    global _provider
    with _lock:
        if _provider is None:
            from opentelemetry.instrumentation.botocore import AiobotocoreInstrumentor
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            _provider = TracerProvider(
                resource=Resource.create({SERVICE_NAME: settings.OTEL_SERVICE_NAME}),
                sampler=ParentBased(TraceIdRatioBased(settings.OTEL_TRACES_SAMPLER_ARG)),
            )
            trace.set_tracer_provider(_provider)
            HTTPXClientInstrumentor().instrument(tracer_provider=_provider)
            AiobotocoreInstrumentor().instrument(  # type: ignore[no-untyped-call]
                tracer_provider=_provider
            )
        return _provider


def configure_tracing(
    settings: Settings, processor: SpanProcessor | None = None
) -> TracerProvider | None:
    """The tracer provider to instrument the app with, or None when tracing is off.

    On when OTEL_EXPORTER_OTLP_ENDPOINT is set (a batching OTLP/HTTP exporter) or when a test
    or benchmark passes `processor` (its exporter must be wrapped in PhiSafeSpanExporter).
    """
    if processor is None and settings.OTEL_EXPORTER_OTLP_ENDPOINT is None:
        return None
    provider = _process_provider(settings)
    if processor is None:
        assert settings.OTEL_EXPORTER_OTLP_ENDPOINT is not None
        exporter = PhiSafeSpanExporter(_otlp_exporter(settings.OTEL_EXPORTER_OTLP_ENDPOINT))
        processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider


def instrument_engine(engine: AsyncEngine, provider: TracerProvider) -> None:
    """Trace the engine's statements (text with placeholders; parameters are never recorded)."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    if getattr(engine.sync_engine, "_tenantdocs_traced", False):
        return
    tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    # Pool usage is a Prometheus metric already (db_pool_connections_in_use): OTel's is a no-op.
    usage = NoOpUpDownCounter("db.client.connections.usage")
    EngineTracer(  # type: ignore[no-untyped-call]
        tracer, engine.sync_engine, connections_usage=usage, enable_commenter=False
    )
    engine.sync_engine._tenantdocs_traced = True  # type: ignore[attr-defined]


def tag_tenant(settings: Settings, tenant_id: object) -> None:
    """Put the tenant id on the current span when OTEL_SPAN_TENANT_ID asks for it."""
    if settings.OTEL_SPAN_TENANT_ID:
        trace.get_current_span().set_attribute(TENANT_ID_ATTRIBUTE, str(tenant_id))
