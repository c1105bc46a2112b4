"""What the audit hash chain costs: audit inserts per second with and without it.

Two throw-away databases at head on one server; in the "unchained" one the chain trigger and
the tenant guard that exists for it are dropped (and the chain columns relaxed), so the only
difference is the chain. Each insert is
its own transaction as app_runtime with the tenant context set, as a request writes it.
Runs alternate between the two databases, round after round, so noise hits both alike.

    make bench-audit            # or: cd backend && python -m bench.audit_chain --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from dataclasses import dataclass

import psutil
import psycopg

from app.core.config import load_settings
from app.database import migrations
from app.database.engine import session_options
from app.database.roles import RUNTIME_ROLE
from testkit import database_harness as harness

SPREAD_TENANTS = 64


@dataclass(frozen=True)
class Scenario:
    """How many writers, and which tenants each writes to."""

    writers: int
    tenants: int
    own_tenant: bool = False  # writer i writes to tenant i only: no two writers ever meet

    @property
    def label(self) -> str:
        """Human-readable row label."""
        if self.own_tenant:
            where = "own tenant each"
        elif self.tenants == 1:
            where = "one tenant"
        else:
            where = f"random of {self.tenants} tenants"
        return f"{self.writers} writer{'s' if self.writers > 1 else ''}, {where}"

    def tenants_of(self, writer: int, tenants: list[uuid.UUID]) -> list[uuid.UUID]:
        """The tenants `writer` picks from."""
        return [tenants[writer]] if self.own_tenant else tenants[: self.tenants]


SCENARIOS = [
    Scenario(1, 1),
    Scenario(1, SPREAD_TENANTS),
    Scenario(8, 1),
    Scenario(8, SPREAD_TENANTS),
    Scenario(8, 8, own_tenant=True),
]


def _prepare(
    server: harness.TestServer, chained: bool, synchronous_commit: str
) -> tuple[str, str, list[uuid.UUID]]:
    """A database at head (chain triggers dropped unless `chained`) with tenants; its URLs."""
    name = harness.create_database(server, owner=harness.MIGRATOR_ROLE)
    harness.bootstrap_least_privilege(server, name)
    owner_url = server.url(name, username=harness.MIGRATOR_ROLE, password=harness.MIGRATOR_PASSWORD)
    # No runtime password: a shared server's app_runtime keeps its own (bench/__init__.py).
    migrations.upgrade(owner_url, None)
    with psycopg.connect(harness.libpq(server.url(name)), autocommit=True) as conn:
        if not chained:
            conn.execute("DROP TRIGGER zz_chain_audit_log ON audit_logs")
            conn.execute("DROP TRIGGER zz_audit_log_tenant_guard ON audit_logs")
            conn.execute("ALTER TABLE audit_logs DROP CONSTRAINT uq_audit_logs_tenant_id_chain_seq")
            for column in ("chain_seq", "prev_hash", "row_hash"):
                conn.execute(f"ALTER TABLE audit_logs ALTER COLUMN {column} DROP NOT NULL")
        tenants = [
            conn.execute(
                "INSERT INTO tenants (name) VALUES (%s) RETURNING id", (f"bench-{n}",)
            ).fetchone()[0]  # type: ignore[index]
            for n in range(SPREAD_TENANTS)
        ]
    # As app_runtime by a role switch at connection start (the app's fallback login mode),
    # with the app's own session settings (plan_cache_mode among them: it reaches the trigger).
    options = session_options(
        load_settings(ENVIRONMENT="test"),
        role=RUNTIME_ROLE,
        server_settings={"synchronous_commit": synchronous_commit},
    )
    runtime_dsn = psycopg.conninfo.make_conninfo(harness.libpq(server.url(name)), options=options)
    return name, runtime_dsn, tenants


async def _insert(conn: psycopg.AsyncConnection[tuple[object, ...]], tenant: uuid.UUID) -> None:
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.current_tenant_id', %s, true)", (str(tenant),))
        await conn.execute(
            "INSERT INTO audit_logs (tenant_id, action, resource_type, resource_id, metadata)"
            " VALUES (%s, 'document.view', 'document', %s, %s::jsonb)",
            (tenant, uuid.uuid4(), '{"request_id": "bench", "fields": ["filename"]}'),
        )


def _cpu_seconds(backends: list[psutil.Process]) -> float:
    return sum(sum(process.cpu_times()[:2]) for process in backends)


async def _rate(
    dsn: str, tenants: list[uuid.UUID], scenario: Scenario, seconds: float, local: bool
) -> tuple[float, float | None]:
    """Inserts per second, and the server backends' CPU µs per insert (None if not local)."""
    # Connections are opened and warmed (plans cached, trigger compiled) before the clock
    # starts, as in the app's pool.
    connections = [await psycopg.AsyncConnection.connect(dsn) for _ in range(scenario.writers)]
    try:
        for writer, conn in enumerate(connections):
            await _insert(conn, scenario.tenants_of(writer, tenants)[0])
        # CPU time, unlike throughput, barely moves with what else runs on a shared machine.
        backends = [psutil.Process(conn.info.backend_pid) for conn in connections] if local else []
        cpu_before = _cpu_seconds(backends)
        start = time.perf_counter()
        deadline = start + seconds

        async def writer_loop(writer: int) -> int:
            chooser = random.Random(writer)
            pool = scenario.tenants_of(writer, tenants)
            done = 0
            while time.perf_counter() < deadline:
                await _insert(connections[writer], chooser.choice(pool))
                done += 1
            return done

        counts = await asyncio.gather(*(writer_loop(n) for n in range(scenario.writers)))
        elapsed = time.perf_counter() - start
        cpu = (_cpu_seconds(backends) - cpu_before) / sum(counts) * 1e6 if local else None
        return sum(counts) / elapsed, cpu
    finally:
        for conn in connections:
            await conn.close()


def main() -> None:
    """Measure every scenario on both databases, interleaved, and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per run (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per cell (default 5)")
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        default="on",
        help="the writers' synchronous_commit (default on, as the app). off takes the disk's"
        " flush latency out of the picture: on a shared, IO-bound machine it shows the CPU"
        " cost a quiet machine would see (but not the one-tenant commit-latency bound)",
    )
    args = parser.parse_args()

    load_before = os.getloadavg()
    server = harness.start_test_server()
    harness.ensure_migrator_role(server)
    unchained_db, unchained_dsn, unchained_tenants = _prepare(
        server, chained=False, synchronous_commit=args.synchronous_commit
    )
    chained_db, chained_dsn, chained_tenants = _prepare(
        server, chained=True, synchronous_commit=args.synchronous_commit
    )
    rates: dict[tuple[Scenario, bool], list[float]] = {
        (scenario, chained): [] for scenario in SCENARIOS for chained in (False, True)
    }
    cpu_per_insert: dict[tuple[Scenario, bool], list[float]] = {key: [] for key in rates}
    # The backends' CPU time is read from /proc, so only for a server on this machine (a
    # Unix-socket host: the embedded server, or a local one).
    local = str(server.superuser_url.query.get("host", "")).startswith("/")
    try:
        for round_number in range(args.rounds):
            for scenario in SCENARIOS:
                variants = [
                    (False, unchained_dsn, unchained_tenants),
                    (True, chained_dsn, chained_tenants),
                ]
                # Who goes first alternates, so a slow start (checkpoint, cache) hits both.
                if round_number % 2:
                    variants.reverse()
                for chained, dsn, tenants in variants:
                    rate, cpu = asyncio.run(_rate(dsn, tenants, scenario, args.seconds, local))
                    rates[(scenario, chained)].append(rate)
                    if cpu is not None:
                        cpu_per_insert[(scenario, chained)].append(cpu)
    finally:
        harness.drop_database(server, unchained_db)
        harness.drop_database(server, chained_db)

    load_after = os.getloadavg()
    print(
        "\nload average (1/5/15 min): "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after"
    )
    print(
        f"\nAudit inserts per second (one transaction each, as app_runtime; "
        f"median of {args.rounds} runs of {args.seconds:g} s per cell, interleaved; "
        f"synchronous_commit {args.synchronous_commit})\n"
    )
    print(
        f"| {'scenario':<34} | {'unchained/s':>11} | {'chained/s':>9} | {'ratio':>5} "
        f"| {'server CPU µs/insert, unchained / chained':>41} |"
    )
    print(f"|{'-' * 36}|{'-' * 13}|{'-' * 11}|{'-' * 7}|{'-' * 43}|")
    for scenario in SCENARIOS:
        unchained = statistics.median(rates[(scenario, False)])
        chained = statistics.median(rates[(scenario, True)])
        cpu = "n/a (server not local)"
        if cpu_per_insert[(scenario, False)] and cpu_per_insert[(scenario, True)]:
            cpu_unchained = statistics.median(cpu_per_insert[(scenario, False)])
            cpu_chained = statistics.median(cpu_per_insert[(scenario, True)])
            cpu = f"{cpu_unchained:.0f} / {cpu_chained:.0f}"
        print(
            f"| {scenario.label:<34} | {unchained:>11.0f} | {chained:>9.0f} | "
            f"{chained / unchained:>5.2f} | {cpu:>41} |"
        )


if __name__ == "__main__":
    main()
