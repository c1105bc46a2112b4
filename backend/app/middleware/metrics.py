"""Request metrics per route template (a pure ASGI middleware: no extra task per request)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from opentelemetry.semconv.attributes.http_attributes import HttpRequestMethodValues
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import metrics

# Paths no route matched (scanners, typos) share one label, so they cannot grow the series.
UNMATCHED_ROUTE = "unmatched"
# OpenTelemetry's HTTP semantic conventions name the standard methods and put every other one
# (WebDAV's PROPFIND, a scanner's made-up verb) under one value, so a client cannot grow the
# series; the request's span and its metrics use the same (`method_label`).
OTHER_METHOD: str = HttpRequestMethodValues.OTHER.value
KNOWN_METHODS = frozenset(method.value for method in HttpRequestMethodValues) - {OTHER_METHOD}


def method_label(method: str) -> str:
    """The request method as spans and metrics name it: a standard one, else `_OTHER`."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/api/v1/documents/{document_id}`), never the path."""
    # FastAPI (>= 0.137) keeps the full template of an included route in its scope entry;
    # scope["route"] holds the route as declared, without the routers' prefixes.
    context: Any = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(context, "path_format", None)
    if template is None:
        template = getattr(scope.get("route"), "path_format", None)
    return str(template) if template else UNMATCHED_ROUTE


@dataclass(frozen=True)
class _RequestSeries:
    """The metric children of one (method, route, status): looked up once, then reused."""

    requests: Counter
    server_errors: Counter | None
    duration: Histogram


# Bounded like the labels themselves (standard methods x route templates x status codes), so
# a request pays a dict lookup, not `.labels()`'s lock and label checks three times.
_SERIES: dict[tuple[str, str, int], _RequestSeries] = {}


def _series(method: str, route: str, status_code: int) -> _RequestSeries:
    key = (method, route, status_code)
    series = _SERIES.get(key)
    if series is None:
        status = str(status_code)
        series = _RequestSeries(
            requests=metrics.HTTP_REQUESTS.labels(method=method, route=route, status=status),
            server_errors=metrics.HTTP_SERVER_ERRORS.labels(
                method=method, route=route, status=status
            )
            if status_code >= 500
            else None,
            duration=metrics.HTTP_REQUEST_DURATION.labels(method=method, route=route),
        )
        _SERIES[key] = series
    return series


class RequestMetrics:
    """Count requests and 5xx answers and time them, labelled by method, route and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            series = _series(method_label(scope["method"]), route_template(scope), status_code)
            series.requests.inc()
            if series.server_errors is not None:
                series.server_errors.inc()
            series.duration.observe(time.perf_counter() - started)
