"""Span capture for tests: an in-memory exporter behind PhiSafeSpanExporter that can be let go.

The tracer provider is one per process (app/core/tracing.py), and the SDK cannot remove a span
processor from it. A test that shut its processor down would leave it there, and every span
ended later in the session (the CLI's OpenBao calls, run in process) would log "Processor is
already shutdown" once per such test, into output other tests read. `CapturedSpans.close`
detaches instead: the processor stays registered but forwards nothing.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.core.tracing import PhiSafeSpanExporter


class CapturedSpans(SpanProcessor):
    """Exports each ended span through PhiSafeSpanExporter into `exporter`, until closed."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self._inner: SimpleSpanProcessor | None = SimpleSpanProcessor(
            PhiSafeSpanExporter(self.exporter)
        )

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Export the span while open; drop it silently once closed."""
        if self._inner is not None:
            self._inner.on_end(span)

    def close(self) -> None:
        """Stop capturing; the spans captured so far stay readable."""
        self._inner = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Spans are exported as they end: nothing is pending."""
        return True
