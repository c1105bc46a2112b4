"""What the request's server span costs per request, in process: ours vs FastAPI's own telemetry.

Issue 21: the request span must cost next to nothing when the sampler does not record it, and
little when it does. Three apps with the product's routes (api_router) plus one trivial route,
driven through ASGI directly (no network, no database, so only the middleware differs): no
tracing, FastAPI's native telemetry (0.165+, tracing only: no metrics, logs or operation
spans), and ours (app/middleware/tracing.py). Each at sampling ratio 0 (no span recorded) and 1
(every span recorded and exported through PhiSafeSpanExporter to a sink that drops it). Rounds
alternate the variants so noise hits all alike; the table shows the best round's CPU time per
request and the overhead over no tracing.

    make bench-span            # or: cd backend && python -m bench.request_span --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from app.api.v1.router import api_router
from app.core.tracing import PhiSafeSpanExporter
from app.middleware.tracing import trace_requests

NO_TELEMETRY: Any = {"tracing": False, "metrics": False, "logs": False}
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/api/v1/things/0f0c4d2e-1111-2222-3333-444455556666",
    "raw_path": b"/api/v1/things/0f0c4d2e-1111-2222-3333-444455556666",
    "root_path": "",
    "query_string": b"limit=20",
    "headers": [
        (b"host", b"api.internal:8000"),
        (b"authorization", b"Bearer header.payload.signature"),
        (b"user-agent", b"bench/1"),
        (b"accept", b"*/*"),
    ],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider(ratio: float) -> TracerProvider:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(SimpleSpanProcessor(PhiSafeSpanExporter(_Discard())))
    return provider


def _app(variant: str, ratio: float) -> FastAPI:
    if variant == "fastapi native":
        app = FastAPI(
            telemetry={
                "tracer_provider": _provider(ratio),
                "metrics": False,
                "logs": False,
                "operation_spans": False,
            }
        )
    else:
        app = FastAPI(telemetry=NO_TELEMETRY)

    @app.get("/api/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    app.include_router(api_router)
    if variant == "ours":
        trace_requests(app, _provider(ratio).get_tracer("bench"), frozenset({"/metrics"}))
    return app


async def _cpu_per_request(app: FastAPI, requests: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: Any) -> None:
        return None

    started = time.process_time()
    for _ in range(requests):
        await app(dict(SCOPE), receive, send)
    return (time.process_time() - started) / requests


def main() -> None:
    """Alternate the variants round by round; print the best round of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    variants = ["no tracing", "fastapi native", "ours"]
    apps: dict[tuple[str, float], FastAPI] = {
        (variant, ratio): _app(variant, ratio) for variant in variants for ratio in (0.0, 1.0)
    }
    for app in apps.values():  # warm up (the first request builds the middleware stack)
        asyncio.run(_cpu_per_request(app, 100))
    best: dict[tuple[str, float], float] = {}
    for round_number in range(args.rounds):
        order = list(apps) if round_number % 2 == 0 else list(apps)[::-1]
        for key in order:
            seconds = asyncio.run(_cpu_per_request(apps[key], args.requests))
            best[key] = min(best.get(key, seconds), seconds)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.rounds} rounds of {args.requests} requests per variant, best round\n")
    print("| request span | sampled | CPU µs/request | overhead µs |")
    print("|---|---:|---:|---:|")
    baseline: Callable[[float], float] = lambda ratio: best[("no tracing", ratio)]  # noqa: E731
    for variant, ratio in apps:
        micros = best[(variant, ratio)] * 1e6
        print(f"| {variant} | {ratio:.0%} | {micros:.0f} | {micros - baseline(ratio) * 1e6:+.0f} |")


if __name__ == "__main__":
    main()
