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
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings

TENANT_ID_ATTRIBUTE = "tenant.id"

# Every attribute a span may leave the process with (docs/OBSERVABILITY.md lists each and who
# sets it). Not here, so dropped: URLs, targets, paths and query strings
# (ids and filter values), client and peer addresses, user agents, header values, SQL
# parameters (never recorded anyway), exception messages and stack traces.
ALLOWED_SPAN_ATTRIBUTES = frozenset(
    {
        # The request's span (app/middleware/tracing.py) and httpx's client spans
        "http.request.method",
        "http.route",
        "http.response.status_code",
        "url.scheme",
        "network.protocol.version",
        # httpx (old semantic conventions' names too)
        "http.method",
        "http.status_code",
        "http.scheme",
        "http.flavor",
        "server.address",
        "server.port",
        "error.type",
        # SQL (StatementTracer below): the statement with placeholders, never its parameters
        "db.system",
        "db.name",
        "db.statement",
        "db.operation",
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


def _needs_filtering(span: ReadableSpan) -> bool:
    """Whether `span` carries anything `phi_safe` would drop (cheap: no copy)."""
    return bool(
        span.events
        or span.links
        or span.status.description
        or not ALLOWED_SPAN_ATTRIBUTES.issuperset(span.attributes or ())
    )


def phi_safe(span: ReadableSpan) -> ReadableSpan:
    """`span` with only allowed attributes, event attributes and no status text.

    A span that already carries nothing else (our request and statement spans, most client
    spans) is returned as it is; only the others are copied.
    """
    if not _needs_filtering(span):
        return span
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


class StatementTracer:
    """One client span per SQL statement run inside a recorded span, on one engine.

    Ours rather than opentelemetry-instrumentation-sqlalchemy's `EngineTracer`, which cannot
    be told to stay out of the way: for every statement, sampled or not, it re-reads the
    engine's URL into attributes, runs a regular expression over the statement for the span
    name, starts a span and makes it current, and it updates a connection-usage counter on
    every pool checkout and checkin (issue 21's profile: about a quarter of the
    instrumentation's CPU on unsampled requests). Here a statement whose enclosing span is not
    recording (an unsampled request, or no request at all: the caller-cache listener, the CLI)
    costs one check, and the attributes that never change are computed once per engine.
    """

    def __init__(self, engine: AsyncEngine, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        url = engine.sync_engine.url
        self.database = url.database or ""
        self.constant_attributes: dict[str, str | int] = {"db.system": "postgresql"}
        for key, value in (
            ("db.name", url.database),
            ("db.user", url.username),
            ("net.peer.name", url.host),
            ("net.peer.port", url.port),
        ):
            if value:
                self.constant_attributes[key] = value
        event.listen(engine.sync_engine, "before_cursor_execute", self.before_cursor_execute)
        event.listen(engine.sync_engine, "after_cursor_execute", self.after_cursor_execute)
        event.listen(engine.sync_engine, "handle_error", self.handle_error)

    def before_cursor_execute(
        self,
        _connection: Any,
        _cursor: Any,
        statement: str,
        _parameters: Any,
        context: ExecutionContext | None,
        _executemany: bool,
    ) -> None:
        """Start the statement's span: its text (placeholders), never its parameters."""
        if context is None or not trace.get_current_span().is_recording():
            return
        operation = statement.split(None, 1)[0].upper() if statement.strip() else "SQL"
        attributes = {
            **self.constant_attributes,
            "db.statement": statement,
            "db.operation": operation,
        }
        span = self.tracer.start_span(
            f"{operation} {self.database}".rstrip(),
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
        )
        context._tenantdocs_span = span  # type: ignore[attr-defined]

    def after_cursor_execute(
        self,
        _connection: Any,
        _cursor: Any,
        _statement: str,
        _parameters: Any,
        context: ExecutionContext | None,
        _executemany: bool,
    ) -> None:
        """End the statement's span."""
        span = getattr(context, "_tenantdocs_span", None)
        if span is not None:
            span.end()

    def handle_error(self, exception_context: ExceptionContext) -> None:
        """End the failed statement's span as an error (the database's message is not kept:
        it can quote a row)."""
        span = getattr(exception_context.execution_context, "_tenantdocs_span", None)
        if span is not None:
            span.set_attribute("error.type", type(exception_context.original_exception).__name__)
            span.set_status(Status(StatusCode.ERROR))
            span.end()


def instrument_engine(engine: AsyncEngine, provider: TracerProvider) -> None:
    """Trace the engine's statements (text with placeholders; parameters are never recorded)."""
    if getattr(engine.sync_engine, "_tenantdocs_traced", False):
        return
    StatementTracer(engine, provider.get_tracer(__name__))
    engine.sync_engine._tenantdocs_traced = True  # type: ignore[attr-defined]


def tag_tenant(settings: Settings, tenant_id: object) -> None:
    """Put the tenant id on the current span when OTEL_SPAN_TENANT_ID asks for it."""
    if settings.OTEL_SPAN_TENANT_ID:
        trace.get_current_span().set_attribute(TENANT_ID_ATTRIBUTE, str(tenant_id))
