"""Noisy neighbours: does tenant B stay fast while tenant A hammers search?

`make bench-neighbours`.

Starts the real app (uvicorn, one worker, as `make run` serves it) on a throw-away embedded
PostgreSQL holding a small corpus for two tenants. Load comes from separate processes (httpx
over loopback, bounded in time and requests):

- B, the quiet tenant: a steady, light search load (B_RATE requests/s, open loop);
- A, the noisy tenant: 32 concurrent searchers looping as fast as they can, ignoring Retry-After.

Phases: B alone; B with A under the default per-tenant limits; B with A with the limits off
(for contrast). Prints B's latency in each, and what A got. Flags: --seconds, --docs, --b-rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

BACKEND_DIR = Path(__file__).resolve().parents[1]
DIMENSIONS = 1024
READY_TIMEOUT_SECONDS = 120


# --- the load process ---------------------------------------------------------------------------


def _query(rng: random.Random) -> dict[str, Any]:
    return {"embedding": [rng.uniform(-1, 1) for _ in range(DIMENSIONS)], "k": 10}


async def _steady(client: httpx.AsyncClient, rate: float, seconds: float) -> list[Any]:
    """Open loop: one search every 1/rate s, whatever the previous ones are doing."""
    rng = random.Random(2)
    results: list[Any] = []

    async def one() -> None:
        started = time.perf_counter()
        try:
            response = await client.post("/api/v1/documents/search", json=_query(rng))
            results.append((response.status_code, time.perf_counter() - started))
        except httpx.HTTPError as exc:
            results.append((type(exc).__name__, time.perf_counter() - started))

    tasks = []
    start = time.perf_counter()
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return results


async def _hammer(
    client: httpx.AsyncClient, concurrency: int, seconds: float, max_requests: int
) -> list[Any]:
    """Closed loop: `concurrency` searchers, each sending its next request at once."""
    rng = random.Random(1)
    body = _query(rng)  # one body: the noisy tenant's client spends its CPU on sending
    results: list[Any] = []
    deadline = time.perf_counter() + seconds

    async def searcher() -> None:
        while time.perf_counter() < deadline and len(results) < max_requests:
            started = time.perf_counter()
            try:
                response = await client.post("/api/v1/documents/search", json=body)
                results.append((response.status_code, time.perf_counter() - started))
            except httpx.HTTPError as exc:
                results.append((type(exc).__name__, time.perf_counter() - started))

    await asyncio.gather(*(searcher() for _ in range(concurrency)))
    return results


async def _load(args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=args.concurrency + 8)
    headers = {"authorization": f"Bearer {args.token}"}
    timeout = httpx.Timeout(30.0)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        if args.mode == "steady":
            results = await _steady(client, args.rate, args.seconds)
        else:
            results = await _hammer(client, args.concurrency, args.seconds, args.max_requests)
    json.dump(results, sys.stdout)


# --- the orchestrator ---------------------------------------------------------------------------


@dataclass
class Tenant:
    """A seeded tenant and a token for its user."""

    name: str
    tenant_id: uuid.UUID
    token: str


@dataclass
class Summary:
    """One load process's outcome."""

    requests: int
    ok: int
    limited: int
    errors: int
    p50_ms: float
    p95_ms: float
    seconds: float

    @classmethod
    def of(cls, results: list[Any], seconds: float) -> Summary:
        """Summarise (status, latency) pairs; latencies of 2xx only."""
        statuses = Counter(status for status, _ in results)
        ok_latencies = sorted(1000 * t for s, t in results if isinstance(s, int) and s < 300)
        ok = len(ok_latencies)
        limited = statuses.get(429, 0)

        def percentile(q: float) -> float:
            if not ok_latencies:
                return float("nan")
            return ok_latencies[min(ok - 1, int(q * ok))]

        return cls(
            requests=len(results),
            ok=ok,
            limited=limited,
            errors=len(results) - ok - limited,
            p50_ms=statistics.median(ok_latencies) if ok_latencies else float("nan"),
            p95_ms=percentile(0.95),
            seconds=seconds,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare(data_dir: Path, docs: int) -> tuple[Any, dict[str, str], list[Tenant]]:
    """Start the embedded server, migrate, seed two tenants; the app's environment and tokens."""
    from app.auth.dev_issuer import dev_issuer_for
    from app.core.config import load_settings
    from app.database import embedded, migrations

    server = embedded.start_embedded(data_dir / "postgres", ephemeral=True)
    runtime_password = embedded.runtime_password_for(data_dir)
    login_url = server.superuser_url()
    migrations.upgrade(login_url, runtime_password)
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": login_url.render_as_string(hide_password=False),
        "APP_RUNTIME_PASSWORD": runtime_password,
        "DEV_ISSUER_KEY_FILE": str(data_dir / "dev-issuer.pem"),
    }
    settings = load_settings(
        **{k: v for k, v in env.items() if k in {"ENVIRONMENT", "DATABASE_URL"}},
        APP_RUNTIME_PASSWORD=runtime_password,
        DEV_ISSUER_KEY_FILE=data_dir / "dev-issuer.pem",
    )
    issuer = dev_issuer_for(settings)
    rng = random.Random(0)
    tenants = []
    with psycopg.connect(server.libpq_superuser_dsn(), autocommit=False) as conn:
        for name in ("A", "B"):
            tenant_id = conn.execute(
                "INSERT INTO tenants (name) VALUES (%s) RETURNING id", (f"tenant-{name}",)
            ).fetchone()[0]  # type: ignore[index]
            subject = f"user-{name}"
            user_id = conn.execute(
                "INSERT INTO users (tenant_id, email, external_idp_id, role)"
                " VALUES (%s, %s, %s, 'admin') RETURNING id",
                (tenant_id, f"{name.lower()}@example.org", subject),
            ).fetchone()[0]  # type: ignore[index]
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO documents (tenant_id, user_id, filename, content_type,"
                    " size_bytes, s3_bucket, s3_key, embedding_vector)"
                    " VALUES (%s, %s, %s, 'application/pdf', 1, 'bench', %s, %s::vector)",
                    [
                        (
                            tenant_id,
                            user_id,
                            f"{n}.pdf",
                            f"{name}/{n}",
                            str([round(rng.uniform(-1, 1), 5) for _ in range(DIMENSIONS)]),
                        )
                        for n in range(docs)
                    ],
                )
            token = issuer.mint(
                subject=subject,
                tenant_id=tenant_id,
                tenant_claim=settings.OIDC_TENANT_CLAIM,
                lifetime_seconds=3600,
            )
            tenants.append(Tenant(name, tenant_id, token))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return server, env, tenants


class App:
    """The app under uvicorn in a subprocess (one worker)."""

    def __init__(self, env: dict[str, str], **settings: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        self.process = subprocess.Popen(command, cwd=BACKEND_DIR, env={**env, **settings})
        # Generous: on a loaded machine (the smoke runs share it) an import and start-up can
        # take half a minute; this bounds a hang, it measures nothing.
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v1/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the app did not become ready within {READY_TIMEOUT_SECONDS} s")

    def stop(self) -> None:
        """Stop the server process."""
        self.process.terminate()
        self.process.wait(timeout=10)


def _start_load(url: str, tenant: Tenant, *options: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.noisy_neighbours", "load", "--url", url]
    command += ["--token", tenant.token, *options]
    return subprocess.Popen(command, cwd=BACKEND_DIR, stdout=subprocess.PIPE)


def _finish(process: subprocess.Popen[bytes], seconds: float) -> Summary:
    stdout, _ = process.communicate(timeout=seconds + 60)
    if process.returncode != 0:
        raise RuntimeError("a load process failed")
    return Summary.of(json.loads(stdout), seconds)


def _phase(
    url: str, tenants: dict[str, Tenant], args: argparse.Namespace, *, with_a: bool
) -> tuple[Summary, Summary | None]:
    quiet = ["--mode", "steady", "--rate", str(args.b_rate), "--seconds", str(args.seconds)]
    noisy = ["--mode", "hammer", "--concurrency", "32", "--seconds", str(args.seconds)]
    noisy += ["--max-requests", str(args.max_requests)]
    a = _start_load(url, tenants["A"], *noisy) if with_a else None
    if a is not None:
        time.sleep(1.0)  # let A reach full pressure before B's clock starts
    b = _start_load(url, tenants["B"], *quiet)
    b_summary = _finish(b, args.seconds)
    a_summary = _finish(a, args.seconds) if a is not None else None
    return b_summary, a_summary


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> None:
    """Run the three phases and print the two tables."""
    from app.core.config import Settings

    defaults = Settings.model_fields
    limits = {
        name: str(override if override is not None else defaults[name].default)
        for name, override in (
            ("TENANT_RATE_LIMIT_PER_SECOND", args.tenant_rate),
            ("TENANT_RATE_LIMIT_BURST", args.tenant_burst),
            ("TENANT_MAX_CONCURRENT_REQUESTS", args.tenant_concurrency),
        )
    }
    with tempfile.TemporaryDirectory(prefix="bench-neighbours-") as tmp:
        print(f"seeding {args.docs} documents per tenant ...", flush=True)
        server, env, seeded = _prepare(Path(tmp), args.docs)
        tenants = {t.name: t for t in seeded}
        results: list[tuple[str, Summary, Summary | None]] = []
        try:
            app = App(env, **limits)
            try:
                print(f"phase 1/3: B alone ({args.seconds:g} s) ...", flush=True)
                results.append(("B alone", *_phase(app.url, tenants, args, with_a=False)))
                print("phase 2/3: B with A, limits on ...", flush=True)
                with_a = _phase(app.url, tenants, args, with_a=True)
                results.append(("B with A (limits on)", *with_a))
            finally:
                app.stop()
            app = App(env, TENANT_RATE_LIMIT_PER_SECOND="0", TENANT_MAX_CONCURRENT_REQUESTS="0")
            try:
                print("phase 3/3: B with A, limits off ...", flush=True)
                with_a = _phase(app.url, tenants, args, with_a=True)
                results.append(("B with A (limits off)", *with_a))
            finally:
                app.stop()
        finally:
            server.destroy()

    alone = results[0][1].p95_ms
    b_rows = [
        [
            name,
            str(b.requests),
            f"{b.p50_ms:.1f}",
            f"{b.p95_ms:.1f}",
            f"{b.p95_ms / alone:.2f}x",
            str(b.limited),
            str(b.errors),
        ]
        for name, b, _ in results
    ]
    a_rows = [
        [
            name.replace("B with A ", ""),
            str(a.requests),
            str(a.ok),
            f"{a.ok / a.seconds:.0f}",
            str(a.limited),
            str(a.errors),
            f"{a.p50_ms:.1f}",
        ]
        for name, _, a in results
        if a is not None
    ]
    print()
    print(
        f"one uvicorn worker, {args.docs} documents per tenant, B: {args.b_rate:g} searches/s,"
        f" A: 32 concurrent searchers, {args.seconds:g} s per phase; limits: "
        + ", ".join(f"{k}={v}" for k, v in limits.items())
    )
    print()
    print(
        _table(
            "Tenant B (quiet) search latency",
            ["scenario", "requests", "p50 ms", "p95 ms", "p95 vs alone", "429", "errors"],
            b_rows,
        )
    )
    print()
    print(
        _table(
            "Tenant A (noisy) outcome",
            ["limits", "requests", "2xx", "2xx/s", "429", "errors", "2xx p50 ms"],
            a_rows,
        )
    )


def main() -> None:
    """`python -m bench.noisy_neighbours [--seconds N]`, or `load ...` (the load process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--docs", type=int, default=2000, help="documents per tenant")
    parser.add_argument("--b-rate", type=float, default=20.0, help="B's searches per second")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap on A's requests")
    parser.add_argument("--tenant-rate", type=float, help="TENANT_RATE_LIMIT_PER_SECOND to use")
    parser.add_argument("--tenant-burst", type=int, help="TENANT_RATE_LIMIT_BURST to use")
    parser.add_argument("--tenant-concurrency", type=int, help="TENANT_MAX_CONCURRENT_REQUESTS")
    sub = parser.add_subparsers(dest="command")
    load = sub.add_parser("load", help="internal: run one load process")
    load.add_argument("--url", required=True)
    load.add_argument("--token", required=True)
    load.add_argument("--mode", choices=["steady", "hammer"], required=True)
    load.add_argument("--rate", type=float, default=20.0)
    load.add_argument("--concurrency", type=int, default=4)
    load.add_argument("--seconds", type=float, default=8.0)
    load.add_argument("--max-requests", type=int, default=200_000)
    args = parser.parse_args()
    if args.command == "load":
        asyncio.run(_load(args))
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
