"""CPU per request of each route and its twin, in one process, request by request.

`make bench-http`'s last table. The throughput ratio over HTTP moves by up to ±25 % between
back-to-back runs on a shared 2-core VM (docs/PERFORMANCE.md), because two uvicorn workers, the
database and the load generator share the cores and the scheduler decides who waits. This table
removes most of that: the app (`bench.baseline:create_app`, the same as the HTTP run's) is
driven in this process through httpx's ASGI transport, one route at a time, alternating the
authenticated request and its twin one by one, and each request's process CPU time is taken
alone (`time.process_time_ns`). Slow drifts of the machine hit both variants alike, and the
median drops what the scheduler adds to a few requests. HTTP parsing is not in it (the same on
both sides). The database's CPU is measured beside it, per pool: the backends of the app's
runtime pool and of the twins' pool (told apart by application_name), summed over the route's
requests (a local server only).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import psutil
import psycopg

from app.core.config import Settings
from bench.baseline import BASELINE_APPLICATION_NAME, create_app

RUNTIME_APPLICATION_NAME = "tenant-docs"  # app.database.engine.build_engine's default

WARMUP_REQUESTS = 50


@dataclass(frozen=True)
class PreparedRequest:
    """One request of a cell, taken apart for the ASGI transport."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def parse_request(raw: bytes) -> PreparedRequest:
    """Split an HTTP/1.1 request as `bench.http_load.encode_request` writes it."""
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _version = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.lower() not in {"host", "content-length", "connection"}:
            headers[name] = value.strip()
    return PreparedRequest(method, path, headers, body)


@dataclass
class CpuSamples:
    """Per-request CPU (ns) of one route's two variants, and the non-2xx answers."""

    authenticated: list[int] = field(default_factory=list)
    baseline: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Database backends' CPU seconds over the route's requests, per pool.
    database_seconds: dict[str, float] = field(default_factory=dict)

    def database_per_request(self, application_name: str) -> float:
        """The pool's backends' CPU per request, in µs."""
        requests = len(self.authenticated)
        seconds = self.database_seconds.get(application_name, 0.0)
        return seconds / requests * 1e6 if requests else 0.0

    def percentile(self, variant: str, q: float) -> float:
        """A percentile of the variant's samples, in µs."""
        samples = self.authenticated if variant == "authenticated" else self.baseline
        return float(np.percentile(samples, q * 100)) / 1000 if samples else 0.0


def _backend_cpu(dsn: str, database: str) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each backend on `database`, with its application_name."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, application_name FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [database],
        ).fetchall()
    totals = {}
    for pid, application_name in rows:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            totals[pid] = (application_name, times.user + times.system)
    return totals


def _database_seconds(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    used: dict[str, float] = {}
    for pid, (application_name, seconds) in after.items():
        start = before.get(pid, (application_name, 0.0))[1]
        used[application_name] = used.get(application_name, 0.0) + seconds - start
    return used


async def _measure(
    settings: Settings,
    requests: dict[str, tuple[list[bytes], list[bytes]]],
    per_variant: int,
    admin_dsn: str,
    database: str,
) -> dict[str, CpuSamples]:
    app = create_app(settings)  # the product app plus the twins, as under uvicorn
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    results: dict[str, CpuSamples] = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http,
    ):
        for name, (authenticated, baseline) in requests.items():
            variants = (
                [parse_request(raw) for raw in authenticated],
                [parse_request(raw) for raw in baseline],
            )
            samples = CpuSamples()
            kept = (samples.authenticated, samples.baseline)
            backends_before: dict[int, tuple[str, float]] = {}
            for index in range(WARMUP_REQUESTS + per_variant):
                if index == WARMUP_REQUESTS:
                    backends_before = _backend_cpu(admin_dsn, database)
                # Alternate which variant goes first, so neither always follows the other.
                for variant in (0, 1) if index % 2 else (1, 0):
                    chosen = variants[variant][index % len(variants[variant])]
                    started = time.process_time_ns()
                    response = await http.request(
                        chosen.method, chosen.path, headers=chosen.headers, content=chosen.body
                    )
                    used = time.process_time_ns() - started
                    if response.status_code >= 300:
                        samples.errors.append(f"{response.status_code} {response.text[:200]}")
                    elif index >= WARMUP_REQUESTS:
                        kept[variant].append(used)
            samples.database_seconds = _database_seconds(
                backends_before, _backend_cpu(admin_dsn, database)
            )
            results[name] = samples
    return results


def measure_in_process(
    settings: Settings,
    requests: dict[str, tuple[list[bytes], list[bytes]]],
    per_variant: int,
    admin_dsn: str,
    database: str,
) -> dict[str, CpuSamples]:
    """Each route's requests (authenticated, baseline) `per_variant` times each, interleaved;
    `admin_dsn` (a superuser's) reads the backends of `database` for their CPU."""
    return asyncio.run(_measure(settings, requests, per_variant, admin_dsn, database))


def print_in_process(results: dict[str, CpuSamples], per_variant: int) -> None:
    """The table: p25 and p50 CPU per request of each variant, and the p50 ratio."""
    print(
        f"\nCPU per request in one process, authenticated and baseline alternating request by"
        f" request ({per_variant} each after {WARMUP_REQUESTS} of warm-up; µs of this process's"
        " CPU: the app's Python and the client's, not the database's)"
    )
    print(
        "| route | auth p25 / p50 | baseline p25 / p50 | auth - baseline p50 | ratio p50 "
        "| database µs/req auth / baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, samples in results.items():
        auth25, auth50 = (
            samples.percentile("authenticated", 0.25),
            samples.percentile("authenticated", 0.5),
        )
        base25, base50 = samples.percentile("baseline", 0.25), samples.percentile("baseline", 0.5)
        ratio = base50 / auth50 if auth50 else 0.0
        auth_db = samples.database_per_request(RUNTIME_APPLICATION_NAME)
        base_db = samples.database_per_request(BASELINE_APPLICATION_NAME)
        print(
            f"| {name} | {auth25:.0f} / {auth50:.0f} | {base25:.0f} / {base50:.0f} |"
            f" {auth50 - base50:+.0f} | {ratio:.2f} | {auth_db:.0f} / {base_db:.0f} |"
        )
        for error in samples.errors[:3]:
            print(f"error sample ({name}): {error}")
