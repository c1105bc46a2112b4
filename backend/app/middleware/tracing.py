"""The request's server span (issue 21): one per HTTP request, named `<METHOD> <route template>`.

Ours rather than opentelemetry-instrumentation-fastapi's (which wraps the ASGI one), because
that one cannot be configured to be cheap: for every request, sampled or not, it matches the
path against every route of the app to name the span, collects the URL, host, client address,
user agent and target into attributes, records duration and size histograms (no-ops here: no
meter provider; the request metrics are Prometheus', `app/middleware/metrics.py`) and parses
the target again at the end. Issue 21's profile put about half of the instrumentation's CPU
on unsampled requests there. This one extracts the caller's trace context, starts the span
and makes it current (so log lines and outgoing calls carry the trace), and only for a
recorded span writes its few attributes, once the router has found the route template.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.middleware.metrics import UNMATCHED_ROUTE, method_label, route_template

Headers = Sequence[tuple[bytes, bytes]]


class _AsgiHeaders(Getter[Headers]):
    """Reads a propagation header (`traceparent`, `baggage`, ...) from an ASGI scope's list."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for header, value in carrier if header == name]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [header.decode("latin-1") for header, _ in carrier]


_HEADERS = _AsgiHeaders()


class RequestTracing:
    """Start the request's server span and make it current around the whole app.

    A span the sampler did not record gets no attributes and no other work; a recorded one
    gets the method, route template, status code, scheme and protocol version (the attributes
    docs/OBSERVABILITY.md lists), never the path, query string, headers or client address.
    """

    def __init__(self, app: ASGIApp, tracer: trace.Tracer, excluded_paths: frozenset[str]) -> None:
        self.app = app
        self.tracer = tracer
        self.excluded_paths = excluded_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http" or scope["path"] in self.excluded_paths:
            await self.app(scope, receive, send)
            return
        method = method_label(scope["method"])
        caller = propagate.extract(scope["headers"], getter=_HEADERS)
        span = self.tracer.start_span(method, context=caller, kind=SpanKind.SERVER)
        if not span.is_recording():
            # Current all the same: log lines carry its trace id, outgoing calls its context.
            with trace.use_span(span, end_on_exit=True):
                await self.app(scope, receive, send)
            return
        status_code = 500  # unless a response starts: an exception escaped every handler

        async def send_and_watch(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        # use_span ends the span on the way out and records an escaping exception (its type
        # only leaves the process: PhiSafeSpanExporter).
        with trace.use_span(span, end_on_exit=True):
            try:
                await self.app(scope, receive, send_and_watch)
            finally:
                _describe(span, scope, method, status_code)


def _describe(span: trace.Span, scope: Scope, method: str, status_code: int) -> None:
    route = route_template(scope)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "http.response.status_code": status_code,
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if route != UNMATCHED_ROUTE:
        attributes["http.route"] = route
        span.update_name(f"{method} {route}")
    span.set_attributes(attributes)
    if status_code >= 500:
        span.set_status(Status(StatusCode.ERROR))


def trace_requests(app: FastAPI, tracer: trace.Tracer, excluded_paths: frozenset[str]) -> None:
    """Wrap the app's whole middleware stack (Starlette's ServerErrorMiddleware included) in
    `RequestTracing`, so the span is current even while a 500 is being answered."""
    build_stack = app.build_middleware_stack

    def build_traced_stack(_app: FastAPI) -> ASGIApp:
        return RequestTracing(build_stack(), tracer, excluded_paths)

    # Starlette offers no hook outside ServerErrorMiddleware; the OTel instrumentation wraps
    # the same method for the same reason.
    app.build_middleware_stack = types.MethodType(build_traced_stack, app)  # type: ignore[method-assign]
