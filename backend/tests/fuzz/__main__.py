"""`make fuzz`: the long leak fuzz, then schemathesis's stateful phase against the served app.

    python -m tests.fuzz --ops 10000 --seed 1 --tenants 20 --concurrency 16

Starts its own throw-away database (embedded unless TEST_DATABASE_URL is set), migrated like
the test suite's, and a local OIDC issuer; exits non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass

from sqlalchemy.engine import URL

from app.core.config import Settings, load_settings
from app.database import Database
from app.database.engine import build_engine, build_runtime_engine, targets_for
from app.database.session import make_sessionmaker
from testkit import database_harness as harness
from testkit.auth_helpers import IssuerServer, create_caller
from tests.fuzz import schema_fuzz
from tests.fuzz.leak import FuzzEnvironment, Report, fuzz


@dataclass
class _Database:
    server: harness.TestServer
    name: str
    owner_url: URL
    settings: Settings


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--ops", type=int, default=10_000, help="operations (default 10000)")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock")
    parser.add_argument("--tenants", type=int, default=20, help="tenants (default 20)")
    parser.add_argument("--concurrency", type=int, default=16, help="workers (default 16)")
    parser.add_argument("--pool", type=int, default=5, help="database pool size (default 5)")
    parser.add_argument(
        "--strict-search",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count searches that miss any of the tenant's true nearest documents as failures"
        " (default; --no-strict-search only counts them)",
    )
    parser.add_argument(
        "--schemathesis-examples",
        type=int,
        default=60,
        help="stateful scenarios for schemathesis (0 skips it; default 60)",
    )
    return parser.parse_args(argv)


def _start_database(issuer: IssuerServer, pool: int) -> _Database:
    server = harness.start_test_server()
    harness.ensure_migrator_role(server)
    own = harness.create_migrated_database(server)
    name, owner_url = own.name, own.owner_url
    settings = load_settings(
        ENVIRONMENT="test",
        DATABASE_URL=owner_url.render_as_string(hide_password=False),
        APP_RUNTIME_PASSWORD=harness.RUNTIME_PASSWORD,
        DB_POOL_SIZE=pool,
        DB_MAX_OVERFLOW=0,
        LOG_LEVEL="CRITICAL",
        OIDC_ISSUER_URL=issuer.url,
        OIDC_CLIENT_ID=issuer.issuer.audience,
    )
    return _Database(server, name, owner_url, settings)


async def _leak_fuzz(
    database: _Database, issuer: IssuerServer, arguments: argparse.Namespace, seed: int
) -> tuple[Report, dict[str, str]]:
    settings = database.settings
    targets = targets_for(database.owner_url, harness.RUNTIME_PASSWORD)
    runtime = build_runtime_engine(targets, settings, pool_size=arguments.pool, max_overflow=0)
    owner = build_engine(database.owner_url, settings, pool_size=2, max_overflow=0)
    try:
        env = FuzzEnvironment(
            settings=settings,
            database=Database(targets=targets, engine=runtime, sessions=make_sessionmaker(runtime)),
            admin_sessions=make_sessionmaker(owner),
            issuer=issuer.issuer,
        )
        report = await fuzz(
            env,
            seed=seed,
            operations=arguments.ops,
            tenants=arguments.tenants,
            concurrency=arguments.concurrency,
            strict_search=arguments.strict_search,
        )
        # The caller schemathesis authenticates as: an admin of a tenant of its own.
        caller = await create_caller(env.admin_sessions, issuer.issuer, role="admin")
        headers = issuer.issuer.headers_for(caller.user, exp=int(time.time()) + 6 * 3600)
        return report, headers
    finally:
        await runtime.dispose()
        await owner.dispose()


def main(argv: list[str] | None = None) -> int:
    """Run both fuzzers and print their summaries; 0 only if both found nothing."""
    arguments = _arguments(argv)
    seed = arguments.seed if arguments.seed is not None else int(time.time()) % 1_000_000
    issuer = IssuerServer().start()
    database = _start_database(issuer, arguments.pool)
    try:
        report, headers = asyncio.run(_leak_fuzz(database, issuer, arguments, seed))
        print(report.summary(), flush=True)
        schema_ok = True
        if arguments.schemathesis_examples > 0:
            result = schema_fuzz.run(
                database.settings, headers, examples=arguments.schemathesis_examples
            )
            print(result.summary(), flush=True)
            schema_ok = result.ok
        return 0 if not report.failures and schema_ok else 1
    finally:
        issuer.stop()
        harness.drop_database(database.server, database.name)


if __name__ == "__main__":
    sys.exit(main())
