"""HTTP-level cost of authentication, tenant context and RLS (`make bench-http`).

Starts the real app with uvicorn (2 workers, `bench.baseline:create_app`: the product app
plus the twins) on a throw-away copy of a cached corpus (a few Zipf-sized tenants, thousands
of documents with embeddings), and drives it from a separate load process
(bench/http_load.py) over keep-alive connections on loopback, kept for the whole run and
spread evenly over the two workers (a fresh set of 16 split anywhere from 8/8 to 14/2).
Each API route is timed next to its benchmark-only twin (bench/baseline.py: the same
service call, no token, no caller lookup, no tenant context, as a role RLS does not apply
to), interleaved in short slices whose order alternates, at concurrency 1, 16 and 64. Also
prints the cost of verifying a token, the workers' peak memory and the database connections
in use, and checks the pools never exceed pool_size + max_overflow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import psycopg
from psycopg import sql

from app.auth.dev_issuer import dev_issuer_for
from app.auth.token_cache import VerifiedTokenCache
from app.auth.tokens import TokenVerifier, build_token_verifier
from app.core.config import BACKEND_DIR, load_settings
from app.database.roles import ADMIN_ROLE
from bench import corpus as corpus_module
from bench.baseline import BASELINE_APPLICATION_NAME
from bench.baseline import BENCH_TELEMETRY_VARIABLE as BENCH_TELEMETRY
from bench.corpus import CorpusSpec
from bench.http_inprocess import RUNTIME_APPLICATION_NAME, measure_in_process, print_in_process
from bench.http_load import Cell, CellResult, encode_request, serve
from testkit import auth_helpers
from testkit import database_harness as harness

logger = logging.getLogger(__name__)

TEMPLATE_DATABASE = "http_bench"
RUN_DATABASE = "http_bench_run"
WORKERS = 2
CONCURRENCIES = (1, 16, 64)
GOAL_CONCURRENCY = 16
GOAL_RATIO = 0.85  # authenticated throughput at least 85 % of the baseline's
TELEMETRY_GOAL_RATIO = 0.95  # with metrics and tracing at least 95 % of without (issue 21)
EMBEDDING_DIMENSIONS = 1024
SEARCH_QUERIES = 32


@dataclass(frozen=True)
class Route:
    """An API route and how to call it and its baseline twin."""

    name: str
    method: str
    path: str  # under /api/v1 and under /bench/baseline


@dataclass
class Measured:
    """Accumulated results of one route, concurrency and variant over the rounds."""

    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the app's workers and the database's backends, while timed
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    app_cpu_seconds: float = 0.0  # the app workers' CPU time over the slices (--telemetry)
    splits: set[tuple[int, ...]] = field(default_factory=set)  # connections per worker

    def add(self, result: CellResult) -> None:
        """Fold in one slice."""
        self.splits.add(result.split)
        self.latencies += result.latencies
        self.requests += len(result.latencies)
        self.seconds += result.elapsed
        self.errors += result.errors
        self.error_samples += result.error_samples[: max(0, 3 - len(self.error_samples))]

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_request(self) -> float:
        """Server CPU µs per successful request (workers + database backends)."""
        return self.cpu_seconds / self.requests * 1e6 if self.requests else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return float(np.percentile(self.latencies, q * 100)) * 1000 if self.latencies else 0.0


@dataclass
class Resources:
    """What the sampler saw while the load ran."""

    peak_rss: dict[int, int] = field(default_factory=dict)  # worker pid -> bytes (sampled)
    connections: dict[str, int] = field(default_factory=dict)  # application_name -> max open
    busy: dict[str, int] = field(default_factory=dict)  # application_name -> max not idle
    samples: int = 0


# ---------------------------------------------------------------------------------------------
# The corpus


def prepare_template(spec: CorpusSpec, rebuild: bool) -> harness.TestServer:
    """The cached corpus (bench/corpus.py's generator, small) plus embeddings on every document."""
    server = corpus_module.bench_server()
    corpus = corpus_module.open_corpus(spec, server, TEMPLATE_DATABASE, rebuild=rebuild)
    with psycopg.connect(harness.libpq(corpus.owner_url)) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ADMIN_ROLE)))
        missing = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM documents WHERE embedding_vector IS NULL)"
        ).fetchone()
    if missing is None or missing[0]:
        started = time.perf_counter()
        _add_embeddings(harness.libpq(corpus.owner_url), spec.seed)
        print(f"corpus: embeddings added in {time.perf_counter() - started:.0f} s")
    return server


def _add_embeddings(owner_dsn: str, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    with psycopg.connect(owner_dsn) as conn:
        # A temp table of the owner's, readable by app_admin (who may not create one).
        conn.execute("CREATE TEMP TABLE new_embeddings (id uuid, embedding vector(1024))")
        conn.execute(
            sql.SQL("GRANT SELECT ON new_embeddings TO {}").format(sql.Identifier(ADMIN_ROLE))
        )
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ADMIN_ROLE)))
        ids = [row[0] for row in conn.execute("SELECT id FROM documents ORDER BY id")]
        conn.execute("RESET ROLE")
        with conn.cursor() as cur, cur.copy("COPY new_embeddings FROM STDIN") as copy:
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                vectors = rng.standard_normal((len(chunk), EMBEDDING_DIMENSIONS))
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                copy.write(
                    "".join(
                        f"{doc_id}\t[{','.join(f'{x:.5f}' for x in vector)}]\n"
                        for doc_id, vector in zip(chunk, vectors, strict=True)
                    )
                )
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ADMIN_ROLE)))
        conn.execute(
            "UPDATE documents d SET embedding_vector = n.embedding FROM new_embeddings n"
            " WHERE d.id = n.id"
        )
        conn.execute("RESET ROLE")
        conn.commit()
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) documents")


@contextmanager
def throwaway_copy(server: harness.TestServer) -> Iterator[str]:
    """A fresh copy of the template database for one run (the POSTs write to it), then dropped."""
    admin = harness.libpq(server.superuser_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(RUN_DATABASE))
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(RUN_DATABASE), sql.Identifier(TEMPLATE_DATABASE)
            )
        )
    try:
        yield RUN_DATABASE
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(RUN_DATABASE)
                )
            )


@dataclass(frozen=True)
class Caller:
    """The tenant and user the load runs as, and some of the tenant's documents."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    subject: str
    documents: int
    document_ids: list[uuid.UUID]


def pick_caller(dsn: str) -> Caller:
    """The admin of the largest tenant (the most work per request under RLS)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ADMIN_ROLE)))
        tenant_id, documents = conn.execute(
            "SELECT tenant_id, count(*) FROM documents WHERE deleted_at IS NULL"
            " GROUP BY tenant_id ORDER BY 2 DESC LIMIT 1"
        ).fetchone() or (None, 0)
        user = conn.execute(
            "SELECT id, external_idp_id FROM users WHERE tenant_id = %s AND role = 'admin'"
            " AND deleted_at IS NULL ORDER BY id LIMIT 1",
            [tenant_id],
        ).fetchone()
        ids = conn.execute(
            "SELECT id FROM documents WHERE tenant_id = %s AND deleted_at IS NULL"
            " ORDER BY id LIMIT 500",
            [tenant_id],
        ).fetchall()
    if tenant_id is None or user is None:
        raise RuntimeError("the corpus has no tenant with an admin")
    return Caller(tenant_id, user[0], user[1], int(documents), [row[0] for row in ids])


# ---------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """The uvicorn process (master) and its workers."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def workers(self) -> list[psutil.Process]:
        """The worker processes (spawned children that are not multiprocessing helpers)."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        return [child for child in children if "resource_tracker" not in " ".join(child.cmdline())]


def app_environment(database_url: str, settings_env: dict[str, str]) -> dict[str, str]:
    """The app's settings for a bench run (as environment variables)."""
    return {
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": database_url,
        "APP_RUNTIME_PASSWORD": "",
        "OIDC_ISSUER_URL": "",
        # Per-tenant rate and concurrency limits off: the load is one tenant by design, and
        # the limits (50/s, 4 at once by default) would answer most of it with 429.
        "TENANT_RATE_LIMIT_PER_SECOND": "0",
        "TENANT_MAX_CONCURRENT_REQUESTS": "0",
        **settings_env,
    }


@contextmanager
def run_server(database_url: str, workdir: Path, settings_env: dict[str, str]) -> Iterator[Server]:
    """Start `uvicorn bench.baseline:create_app --factory --workers 2`; wait until it is ready."""
    port = free_port()
    env = {**os.environ, **app_environment(database_url, settings_env)}
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "uvicorn.log"
    command = [
        sys.executable, "-m", "uvicorn", "bench.baseline:create_app", "--factory",
        "--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning",
        # The load process keeps its connections for the whole run (bench/http_load.py).
        "--timeout-keep-alive", "3600",
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=BACKEND_DIR, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    server = Server(process, port, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: Server) -> None:
    # Generous: on a shared, loaded machine importing the app alone can take most of a minute.
    deadline = time.monotonic() + 300
    url = f"http://127.0.0.1:{server.port}/api/v1/health/ready"
    ready: httpx.Response | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"uvicorn exited:\n{server.log.read_text()[-3000:]}")
        try:
            ready = httpx.get(url, timeout=2)
            if ready.status_code == 200 and len(server.workers()) >= WORKERS:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    last = f"last answer: {ready.status_code} {ready.text[:500]}" if ready is not None else ""
    raise RuntimeError(f"uvicorn did not become ready ({last}):\n{server.log.read_text()[-3000:]}")


# ---------------------------------------------------------------------------------------------
# What is sent


ROUTES = (
    Route("GET /me", "GET", "/me"),
    Route("GET /documents", "GET", "/documents"),
    Route("GET /documents/{id}", "GET", "/documents/{id}"),
    Route("POST /documents/search", "POST", "/documents/search"),
    Route("POST /documents", "POST", "/documents"),
)


def build_requests(
    route: Route, headers: dict[str, str], caller: Caller, prefix: str
) -> list[bytes]:
    """The requests a cell cycles through (the same list for a route's two variants)."""
    rng = random.Random(7)
    json_headers = {**headers, "Content-Type": "application/json"}
    if route.path == "/documents/{id}":
        return [
            encode_request("GET", f"{prefix}/documents/{doc_id}", headers)
            for doc_id in caller.document_ids
        ]
    if route.path == "/documents/search":
        vectors = np.random.default_rng(11).standard_normal((SEARCH_QUERIES, EMBEDDING_DIMENSIONS))
        bodies = [
            json.dumps({"embedding": [round(float(x), 5) for x in vector], "k": 10}).encode()
            for vector in vectors
        ]
        return [encode_request("POST", prefix + route.path, json_headers, body) for body in bodies]
    if route.method == "POST":
        bodies = [
            json.dumps(
                {
                    "filename": f"bench-{n}.pdf",
                    "content_type": "application/pdf",
                    "size_bytes": rng.randint(1000, 10**7),
                    "s3_bucket": "bench-bucket",
                    "s3_key": f"bench/{n}.pdf",
                    "metadata": {"department": "cardiology", "category": "lab"},
                }
            ).encode()
            for n in range(64)
        ]
        return [encode_request("POST", prefix + route.path, json_headers, body) for body in bodies]
    return [encode_request(route.method, prefix + route.path, headers)]


def selected(args: argparse.Namespace) -> list[Route]:
    """The routes `--routes` names, in the table's order."""
    return [route for route in ROUTES if route.name in args.routes]


def measured_routes(results: dict[tuple[str, int, str], Measured]) -> list[Route]:
    """The routes that have results, in the table's order."""
    names = {name for name, _, _ in results}
    return [route for route in ROUTES if route.name in names]


def check_twins_agree(
    port: int,
    routes: dict[str, tuple[list[bytes], list[bytes]]],
    auth: dict[str, str],
    baseline: dict[str, str],
    caller: Caller,
) -> None:
    """Before timing: each read route and its twin give the same answer."""
    base = f"http://127.0.0.1:{port}"
    doc = caller.document_ids[0]
    with httpx.Client(base_url=base, timeout=30) as http:
        for path in ("/me", "/documents", f"/documents/{doc}"):
            real = http.get("/api/v1" + path, headers=auth)
            twin = http.get("/bench/baseline" + path, headers=baseline)
            if real.status_code != 200 or real.json() != twin.json():
                raise RuntimeError(
                    f"{path}: the route and its baseline disagree: {real.text[:300]}"
                )
        body = {"embedding": [0.01] * EMBEDDING_DIMENSIONS, "k": 10}
        real = http.post("/api/v1/documents/search", headers=auth, json=body)
        twin = http.post("/bench/baseline/documents/search", headers=baseline, json=body)
        # Not compared row for row: the route may walk the HNSW index (search_documents()),
        # the twin scans exactly (app_admin may not execute the function); see its docstring.
        if (
            real.status_code != 200
            or twin.status_code != 200
            or len(real.json()["items"]) != 10
            or len(twin.json()["items"]) != 10
        ):
            raise RuntimeError(
                f"search: the route and its baseline disagree: {real.text[:300]}"
                f" / {twin.text[:300]}"
            )


# ---------------------------------------------------------------------------------------------
# Measuring


# Sent once on each new load connection to learn which worker holds it (no database call).
PROBE_REQUEST = encode_request("GET", "/api/v1/health/live", {})


def load_cell(
    port: int,
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    max_requests: int,
    workers: list[psutil.Process],
) -> Cell:
    """A cell whose connections are spread evenly over `workers` (bench/http_load.py)."""
    return Cell(
        "127.0.0.1",
        port,
        requests,
        concurrency,
        seconds,
        max_requests,
        worker_pids=tuple(worker.pid for worker in workers),
        probe=PROBE_REQUEST,
    )


class LoadProcess:
    """The separate load-generating process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.parent, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child,), daemon=True)
        self.process.start()

    def run(self, cell: Cell) -> CellResult:
        """Run one cell and wait for its result."""
        self.parent.send(cell)
        result: CellResult = self.parent.recv()
        return result

    def close(self) -> None:
        """Stop the process."""
        self.parent.send(None)
        self.process.join(timeout=10)


class Sampler(threading.Thread):
    """Samples the workers' RSS and the database's connections while the load runs."""

    def __init__(self, workers: list[psutil.Process], dsn: str, database: str) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.dsn = dsn
        self.database = database
        self.resources = Resources()
        self.stopping = threading.Event()

    def run(self) -> None:
        """Sample every 100 ms until stopped."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.wait(0.1):
                for worker in self.workers:
                    rss = worker.memory_info().rss
                    self.resources.peak_rss[worker.pid] = max(
                        rss, self.resources.peak_rss.get(worker.pid, 0)
                    )
                rows = conn.execute(
                    "SELECT application_name, count(*), count(*) FILTER (WHERE state <> 'idle')"
                    " FROM pg_stat_activity WHERE datname = %s GROUP BY 1",
                    [self.database],
                ).fetchall()
                for name, total, busy in rows:
                    self.resources.connections[name] = max(
                        total, self.resources.connections.get(name, 0)
                    )
                    self.resources.busy[name] = max(busy, self.resources.busy.get(name, 0))
                self.resources.samples += 1


class ServerCpu:
    """CPU time of the app's workers and of the database's backends (a local server only).

    CPU per request barely moves with what else runs on a shared machine, unlike throughput:
    on a busy machine it is the column to read. Backends that exit during a slice (pool
    overflow) take their CPU with them, so keep concurrency within the pool for this column.
    """

    def __init__(self, workers: list[psutil.Process], dsn: str, database: str) -> None:
        self.workers = workers
        self.dsn = dsn
        self.database = database

    def _backends(self) -> list[psutil.Process]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            pids = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.database],
            ).fetchall()
        processes = []
        for (pid,) in pids:
            with contextlib.suppress(psutil.Error):
                processes.append(psutil.Process(pid))
        return processes

    def snapshot(self) -> dict[int, float]:
        """CPU seconds so far, per process."""
        totals = {}
        for process in [*self.workers, *self._backends()]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                totals[process.pid] = times.user + times.system
        return totals

    @staticmethod
    def used(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU seconds between two snapshots (a process new in `after` counts from zero)."""
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def measure(
    load: LoadProcess,
    port: int,
    requests: dict[str, tuple[list[bytes], list[bytes]]],
    args: argparse.Namespace,
    cpu: ServerCpu,
) -> dict[tuple[str, int, str], Measured]:
    """Every route at every concurrency, authenticated and baseline slices alternating."""
    results: dict[tuple[str, int, str], Measured] = {}
    for route in selected(args):
        authenticated, baseline = requests[route.name]
        for concurrency in args.concurrency:
            for batch in (authenticated, baseline):
                # Warm-up: connections opened, statements prepared, caches warm.
                load.run(load_cell(port, batch, concurrency, args.warmup, 10**9, cpu.workers))
            order = [("rls", authenticated), ("baseline", baseline)]
            for round_number in range(args.rounds):
                for variant, batch in order if round_number % 2 == 0 else order[::-1]:
                    cell = load_cell(
                        port, batch, concurrency, args.seconds, args.max_requests, cpu.workers
                    )
                    measured = results.setdefault((route.name, concurrency, variant), Measured())
                    before = cpu.snapshot()
                    measured.add(load.run(cell))
                    measured.cpu_seconds += cpu.used(before, cpu.snapshot())
            auth = results[(route.name, concurrency, "rls")]
            base = results[(route.name, concurrency, "baseline")]
            print(
                f"  {route.name:<24} c={concurrency:<3} authenticated {auth.throughput:7.0f} req/s,"
                f" baseline {base.throughput:7.0f} req/s; server CPU µs/request"
                f" {auth.cpu_per_request:.0f} / {base.cpu_per_request:.0f}; connections per"
                f" worker {_splits(auth.splits | base.splits)}",
                flush=True,
            )
    return results


def _splits(splits: set[tuple[int, ...]]) -> str:
    return ", ".join(sorted("/".join(str(count) for count in split) for split in splits)) or "?"


def jwt_costs(iterations: int) -> list[tuple[str, float, float, int]]:
    """(verifier, µs per full verification, µs per repeat token (cache hit), JWKS fetches incl.
    the warm-up calls) per kind of token."""
    import asyncio

    rows: list[tuple[str, float, float, int]] = []

    def time_one(verifier: TokenVerifier, token: str) -> float:
        async def loop() -> float:
            await verifier.verify(token)  # warm: keys fetched and cached
            started = time.perf_counter()
            for _ in range(iterations):
                await verifier.verify(token)
            return (time.perf_counter() - started) / iterations * 1e6

        return asyncio.run(loop())

    def time_it(verifier: TokenVerifier, token: str) -> tuple[float, float]:
        cached = time_one(verifier, token)
        verifier.cache = VerifiedTokenCache(max_entries=0)  # every call a full check
        return time_one(verifier, token), cached

    with tempfile.TemporaryDirectory() as workdir:
        settings = load_settings(
            ENVIRONMENT="development", DEV_ISSUER_KEY_FILE=Path(workdir) / "key.pem"
        )
        issuer = dev_issuer_for(settings)
        token = issuer.mint(subject="bench", tenant_id=uuid.uuid4(), tenant_claim="tenant_id")
        rows.append(
            (
                "dev issuer (ES256)",
                *time_it(build_token_verifier(settings, dev_issuer=issuer), token),
                0,
            )
        )
    idp = auth_helpers.IssuerServer().start()
    try:
        oidc = load_settings(
            ENVIRONMENT="development", OIDC_ISSUER_URL=idp.url, OIDC_CLIENT_ID=idp.issuer.audience
        )
        for algorithm in ("RS256", "ES256"):
            verifier = build_token_verifier(oidc)
            token = idp.issuer.mint(tenant_id=uuid.uuid4(), subject="bench", algorithm=algorithm)
            before = idp.jwks_fetches
            full, cached = time_it(verifier, token)
            rows.append(
                (f"OIDC, cached JWKS ({algorithm})", full, cached, idp.jwks_fetches - before)
            )
    finally:
        idp.stop()
    return rows


# ---------------------------------------------------------------------------------------------
# Reporting


def machine_description(dsn: str) -> list[str]:
    """nproc, CPU model, RAM, Python and PostgreSQL versions."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        max_connections = conn.execute("SHOW max_connections").fetchone()
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), {ram} RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"PostgreSQL {version[0] if version else '?'} (max_connections "
        f"{max_connections[0] if max_connections else '?'})",
    ]


def print_results(results: dict[tuple[str, int, str], Measured], concurrencies: list[int]) -> bool:
    """The table; True if the goal holds at GOAL_CONCURRENCY for every route."""
    header = (
        "| route | conc. | authenticated req/s | p50 / p99 ms | errors | baseline req/s "
        "| p50 / p99 ms | errors | throughput ratio | server CPU µs/req auth / base | CPU ratio |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    met = True
    for route in measured_routes(results):
        for concurrency in concurrencies:
            auth = results[(route.name, concurrency, "rls")]
            base = results[(route.name, concurrency, "baseline")]
            ratio = auth.throughput / base.throughput if base.throughput else 0.0
            # Baseline CPU over ours: the throughput ratio if the server's CPU were the bound.
            cpu_ratio = base.cpu_per_request / auth.cpu_per_request if auth.cpu_per_request else 0.0
            mark = ""
            if concurrency == GOAL_CONCURRENCY:
                ok = ratio >= GOAL_RATIO and auth.errors == 0 and base.errors == 0
                met &= ok
                mark = "" if ok else " (!)"
            print(
                f"| {route.name} | {concurrency} | {auth.throughput:.0f} | "
                f"{auth.percentile(0.5):.2f} / {auth.percentile(0.99):.2f} | {auth.errors} | "
                f"{base.throughput:.0f} | {base.percentile(0.5):.2f} / "
                f"{base.percentile(0.99):.2f} | {base.errors} | {ratio:.2f}{mark} | "
                f"{auth.cpu_per_request:.0f} / {base.cpu_per_request:.0f} | {cpu_ratio:.2f} |"
            )
    for (name, concurrency, variant), measured in results.items():
        for sample in measured.error_samples:
            print(f"error sample ({name}, c={concurrency}, {variant}): {sample}")
    return met


def cpu_seconds(workers: list[psutil.Process]) -> float:
    """User plus system CPU time the processes have used so far."""
    return sum(sum(worker.cpu_times()[:2]) for worker in workers)


def measure_telemetry(
    load: LoadProcess,
    servers: dict[str, Server],
    requests: dict[str, tuple[list[bytes], list[bytes]]],
    args: argparse.Namespace,
) -> dict[tuple[str, int, str], Measured]:
    """Every route at every concurrency on the telemetry-on and -off servers, alternating.

    Besides throughput, the app workers' CPU time per request: on a machine shared with other
    work, throughput measures the machine's mood as much as the app, CPU time per request
    much less so.
    """
    ports = {variant: server.port for variant, server in servers.items()}
    workers = {variant: server.workers() for variant, server in servers.items()}
    results: dict[tuple[str, int, str], Measured] = {}
    for route in selected(args):
        authenticated, _ = requests[route.name]
        for concurrency in args.concurrency:
            for variant, port in ports.items():
                load.run(
                    load_cell(
                        port, authenticated, concurrency, args.warmup, 10**9, workers[variant]
                    )
                )
            order = list(ports.items())
            for round_number in range(args.rounds):
                for variant, port in order if round_number % 2 == 0 else order[::-1]:
                    cell = load_cell(
                        port, authenticated, concurrency, args.seconds, args.max_requests,
                        workers[variant],
                    )  # fmt: skip
                    measured = results.setdefault((route.name, concurrency, variant), Measured())
                    cpu_before = cpu_seconds(workers[variant])
                    measured.add(load.run(cell))
                    measured.app_cpu_seconds += cpu_seconds(workers[variant]) - cpu_before
            on = results[(route.name, concurrency, "on")]
            off = results[(route.name, concurrency, "off")]
            print(
                f"  {route.name:<24} c={concurrency:<3} telemetry on {on.throughput:7.0f} req/s,"
                f" off {off.throughput:7.0f} req/s",
                flush=True,
            )
    return results


def _verdict(met: bool, concurrencies: list[int]) -> str:
    """The goal line's verdict; a run without the goal's concurrency has none."""
    if GOAL_CONCURRENCY not in concurrencies:
        return f"not measured (concurrency {GOAL_CONCURRENCY} was not run)"
    return "met" if met else "MISSED (!)"


def print_telemetry_results(
    results: dict[tuple[str, int, str], Measured], concurrencies: list[int]
) -> bool:
    """The on/off table; True if every route at GOAL_CONCURRENCY keeps TELEMETRY_GOAL_RATIO."""
    print(
        "| route | conc. | telemetry on req/s | p50 / p99 ms | errors | off req/s | p50 / p99 ms"
        " | errors | on/off ratio | app CPU ms/request on / off | CPU ratio off/on |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    met = True
    for route in measured_routes(results):
        for concurrency in concurrencies:
            on = results[(route.name, concurrency, "on")]
            off = results[(route.name, concurrency, "off")]
            ratio = on.throughput / off.throughput if off.throughput else 0.0
            cpu_on = on.app_cpu_seconds / on.requests if on.requests else 0.0
            cpu_off = off.app_cpu_seconds / off.requests if off.requests else 0.0
            mark = ""
            if concurrency == GOAL_CONCURRENCY:
                ok = ratio >= TELEMETRY_GOAL_RATIO and on.errors == 0 and off.errors == 0
                met &= ok
                mark = "" if ok else " (!)"
            print(
                f"| {route.name} | {concurrency} | {on.throughput:.0f} | "
                f"{on.percentile(0.5):.2f} / {on.percentile(0.99):.2f} | {on.errors} | "
                f"{off.throughput:.0f} | {off.percentile(0.5):.2f} / "
                f"{off.percentile(0.99):.2f} | {off.errors} | {ratio:.2f}{mark} | "
                f"{cpu_on * 1000:.2f} / {cpu_off * 1000:.2f} | "
                f"{cpu_off / cpu_on if cpu_on else 0.0:.2f} |"
            )
    return met


def run_telemetry(
    args: argparse.Namespace,
    load: LoadProcess,
    database_url: str,
    workdir: Path,
    settings_env: dict[str, str],
    requests: dict[str, tuple[list[bytes], list[bytes]]],
) -> bool:
    """Two servers on the same database, telemetry off and on, loaded in alternating slices."""
    with (
        run_server(database_url, workdir / "off", {**settings_env, BENCH_TELEMETRY: "off"}) as off,
        run_server(
            database_url,
            workdir / "on",
            {
                **settings_env,
                BENCH_TELEMETRY: "on",
                "OTEL_TRACES_SAMPLER_ARG": str(args.trace_ratio),
            },
        ) as on,
    ):
        print(
            f"\napp: two uvicorn servers ({WORKERS} workers each) on one database: telemetry on"
            " (request metrics, traces of FastAPI/SQLAlchemy/httpx batched into an in-process"
            f" sink through the PHI filter, {args.trace_ratio:.0%} of requests traced) and off"
            " (no request metrics, no tracer)"
        )
        print(
            f"timing: {args.rounds} slices of {args.seconds:g} s per variant and cell"
            f" (order alternating), after {args.warmup:g} s of warm-up\n"
        )
        results = measure_telemetry(load, {"on": on, "off": off}, requests, args)
    print()
    met = print_telemetry_results(results, args.concurrency)
    print(
        f"\ngoal: at concurrency {GOAL_CONCURRENCY}, throughput with telemetry >= "
        f"{TELEMETRY_GOAL_RATIO:.0%} of without, 0 errors: {_verdict(met, args.concurrency)}"
    )
    return met


def print_resources(resources: Resources, workers: list[psutil.Process], pool_cap: int) -> bool:
    """Memory and connections; True if no pool went over its bound."""
    print("\n| worker pid | peak RSS (sampled) | peak RSS (kernel high-water mark) |")
    print("|---|---:|---:|")
    for worker in workers:
        hwm = _high_water_mark(worker.pid)
        sampled = resources.peak_rss.get(worker.pid, 0) / 2**20
        print(f"| {worker.pid} | {sampled:.0f} MiB | {hwm} |")
    bound = WORKERS * pool_cap
    print(
        "\n| connections (application_name) | max open | max busy |"
        f" bound ({WORKERS} workers x {pool_cap}) |"
    )
    print("|---|---:|---:|---:|")
    within = True
    for name in (RUNTIME_APPLICATION_NAME, BASELINE_APPLICATION_NAME):
        opened = resources.connections.get(name, 0)
        within &= opened <= bound
        print(f"| {name} | {opened} | {resources.busy.get(name, 0)} | {bound} |")
    print(f"({resources.samples} samples of pg_stat_activity, every 100 ms)")
    return within


def _high_water_mark(pid: int) -> str:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return "n/a"
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return f"{int(line.split()[1]) / 1024:.0f} MiB"
    return "n/a"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=8000, help="corpus documents")
    parser.add_argument("--tenants", type=int, default=4, help="corpus tenants")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed slice")
    parser.add_argument("--rounds", type=int, default=2, help="slices per variant and cell")
    parser.add_argument("--warmup", type=float, default=0.5, help="untimed seconds per variant")
    parser.add_argument("--max-requests", type=int, default=50_000, help="cap per slice")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES))
    parser.add_argument(
        "--routes",
        nargs="+",
        choices=[route.name for route in ROUTES],
        default=[route.name for route in ROUTES],
        metavar="ROUTE",
        help='only these routes, e.g. --routes "GET /documents" (default: all)',
    )
    parser.add_argument("--pool-size", type=int, default=10, help="DB_POOL_SIZE of the app")
    parser.add_argument("--max-overflow", type=int, default=10, help="DB_MAX_OVERFLOW of the app")
    parser.add_argument(
        "--jwt-iterations", type=int, default=2000, help="token checks timed (0: skip that table)"
    )
    parser.add_argument(
        "--cpu-requests",
        type=int,
        default=400,
        help="requests per variant and route for the in-process CPU table (0: skip it)",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached corpus")
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help="instead: authenticated routes with metrics and tracing (in-process sink) on vs off,"
        " two servers side by side",
    )
    parser.add_argument(
        "--trace-ratio",
        type=float,
        default=1.0,
        help="with --telemetry: OTEL_TRACES_SAMPLER_ARG of the telemetry-on server (1.0: every"
        " request traced)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Prepare, start the app, load it, print the tables."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    spec = CorpusSpec(documents=args.docs, tenants=args.tenants, max_users_per_tenant=3)
    print(f"corpus: {spec.documents:,} documents with embeddings over {spec.tenants} tenants")
    server = prepare_template(spec, args.rebuild)
    admin_dsn = harness.libpq(server.superuser_url)
    for line in machine_description(admin_dsn):
        print(line)
    print("\ntoken verification, in process (what each request pays before any SQL):")
    # Not part of the telemetry comparison, which both servers pay alike.
    skip_jwt = args.telemetry or not args.jwt_iterations
    for name, full, cached, fetches in [] if skip_jwt else jwt_costs(args.jwt_iterations):
        print(
            f"  {name:<28} {full:7.1f} µs full check, {cached:5.1f} µs repeat token (cached),"
            f" JWKS fetches (warm-up incl.): {fetches}"
        )
    pool_cap = args.pool_size + args.max_overflow
    load = LoadProcess()
    try:
        with throwaway_copy(server) as database, tempfile.TemporaryDirectory() as workdir:
            database_url = server.url(database).render_as_string(hide_password=False)
            caller = pick_caller(harness.libpq(server.url(database)))
            key_file = Path(workdir) / "dev-issuer.pem"
            settings_env = {
                "DEV_ISSUER_KEY_FILE": str(key_file),
                "DB_POOL_SIZE": str(args.pool_size),
                "DB_MAX_OVERFLOW": str(args.max_overflow),
            }
            settings = load_settings(ENVIRONMENT="development", DEV_ISSUER_KEY_FILE=key_file)
            token = dev_issuer_for(settings).mint(
                subject=caller.subject,
                tenant_id=caller.tenant_id,
                tenant_claim=settings.OIDC_TENANT_CLAIM,
                lifetime_seconds=3600,
            )
            auth = {"Authorization": f"Bearer {token}"}
            baseline = {
                "X-Bench-Tenant": str(caller.tenant_id),
                "X-Bench-User": str(caller.user_id),
                "X-Bench-Subject": caller.subject,
            }
            requests = {
                route.name: (
                    build_requests(route, auth, caller, "/api/v1"),
                    build_requests(route, baseline, caller, "/bench/baseline"),
                )
                for route in ROUTES
            }
            if args.telemetry:
                run_telemetry(args, load, database_url, Path(workdir), settings_env, requests)
                return 0
            with run_server(database_url, Path(workdir), settings_env) as app_server:
                workers = app_server.workers()
                print(
                    f"\napp: uvicorn bench.baseline:create_app, {len(workers)} workers, pool"
                    f" {args.pool_size} + {args.max_overflow} per engine; load as the admin of the"
                    f" largest tenant ({caller.documents:,} active documents)"
                )
                check_twins_agree(app_server.port, requests, auth, baseline, caller)
                sampler = Sampler(workers, admin_dsn, database)
                sampler.start()
                print(
                    f"timing: {args.rounds} slices of {args.seconds:g} s per variant and cell"
                    f" (order alternating), after {args.warmup:g} s of warm-up\n"
                )
                started = time.perf_counter()
                server_cpu = ServerCpu(workers, admin_dsn, database)
                results = measure(load, app_server.port, requests, args, server_cpu)
                sampler.stopping.set()
                sampler.join()
                print(f"timing: took {time.perf_counter() - started:.0f} s\n")
                met = print_results(results, args.concurrency)
                within = print_resources(sampler.resources, workers, pool_cap)
            if args.cpu_requests:
                # After the server has stopped: nothing else runs while this is timed.
                app_settings = load_settings(**app_environment(database_url, settings_env))
                chosen = {route.name: requests[route.name] for route in selected(args)}
                cpu = measure_in_process(
                    app_settings, chosen, args.cpu_requests, admin_dsn, database
                )
                print_in_process(cpu, args.cpu_requests)
    finally:
        load.close()
    print(
        f"\ngoal: at concurrency {GOAL_CONCURRENCY}, authenticated throughput >= "
        f"{GOAL_RATIO:.0%} of the baseline and 0 errors: {_verdict(met, args.concurrency)}"
    )
    print(f"pools within pool_size + max_overflow per worker: {'yes' if within else 'NO (!)'}")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
