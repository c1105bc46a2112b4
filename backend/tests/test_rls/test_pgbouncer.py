"""Through pgbouncer in transaction mode (issue 22): the app works unchanged and no tenant
context leaks between the clients that share its server connections.

Debian's pgbouncer (1.18: no protocol-level prepared statements, start-up `options` refused)
sits in front of the test server, keeping at most two server connections per database and
user. The pooled-connection leak tests and a bounded leak fuzz run through it, with
DATABASE_POOL_MODE=transaction (no prepares; settings made transaction-local by each tenant
transaction's opening message).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.core.config import PoolMode, Settings
from app.database import Database
from app.database.engine import build_engine, build_runtime_engine, targets_for
from app.database.session import make_sessionmaker, tenant_transaction
from app.main import caller_listener, create_app
from app.services.caller_cache import CallerCache
from testkit import database_harness as harness
from testkit.auth_helpers import TestIssuer, create_caller
from testkit.factories import provision_tenant
from testkit.pgbouncer import Pgbouncer, start_pgbouncer
from testkit.protocol_trace import traced
from tests.fuzz.leak import FuzzEnvironment, fuzz
from tests.own_database import DatabaseSet
from tests.test_api.conftest import document_body
from tests.test_rls.test_pooled_connections import (
    test_a_rolled_back_transaction_leaves_no_context_behind,
    test_many_concurrent_tenants_over_a_two_connection_pool_each_see_their_own,
)

__all__ = [  # collected here again, through pgbouncer
    "test_a_rolled_back_transaction_leaves_no_context_behind",
    "test_many_concurrent_tenants_over_a_two_connection_pool_each_see_their_own",
]


@pytest.fixture(scope="module")
def pgbouncer(test_server: harness.TestServer) -> Iterator[Pgbouncer]:
    """pgbouncer (transaction mode, two server connections per database and user)."""
    bouncer = start_pgbouncer(
        test_server.superuser_url,
        {
            "app_runtime": harness.RUNTIME_PASSWORD,
            harness.MIGRATOR_ROLE: harness.MIGRATOR_PASSWORD,
        },
    )
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="module")
def pooled_settings(database_set: DatabaseSet) -> Settings:
    """The run's settings, told that the pool is transaction-mode."""
    return database_set.settings.model_copy(update={"DATABASE_POOL_MODE": PoolMode.TRANSACTION})


@pytest.fixture
def migrated_db(
    migrated_db: harness.MigratedDatabase, pgbouncer: Pgbouncer
) -> harness.MigratedDatabase:
    """The run's database, its migrating login (and so the runtime login) through pgbouncer."""
    return dataclasses.replace(migrated_db, owner_url=pgbouncer.url(migrated_db.owner_url))


@pytest.fixture
def settings(pooled_settings: Settings) -> Settings:
    """DATABASE_POOL_MODE=transaction for the imported tests."""
    return pooled_settings


async def test_start_up_options_and_prepares_would_break_and_the_setting_avoids_them(
    migrated_db: harness.MigratedDatabase, pooled_settings: Settings, admin_sessions: object
) -> None:
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    direct = build_runtime_engine(
        targets, pooled_settings.model_copy(update={"DATABASE_POOL_MODE": PoolMode.SESSION})
    )
    try:
        with pytest.raises(OperationalError, match="unsupported startup parameter"):
            async with direct.connect():
                pass
    finally:
        await direct.dispose()
    pooled = build_runtime_engine(targets, pooled_settings, pool_size=2, max_overflow=0)
    tenant = await provision_tenant(admin_sessions, documents=1)  # type: ignore[arg-type]
    try:
        # More runs of one statement than psycopg's prepare threshold (5): none is prepared,
        # and the engine's settings hold in every transaction (its opening message makes them).
        for _ in range(8):
            async with tenant_transaction(make_sessionmaker(pooled), tenant.tenant_id) as session:
                shown = (
                    await session.execute(
                        text(
                            "SELECT (SELECT setting FROM pg_settings"
                            " WHERE name = 'statement_timeout'),"
                            " current_setting('plan_cache_mode'), current_user"
                        )
                    )
                ).one()
                assert tuple(shown) == (
                    str(pooled_settings.DB_STATEMENT_TIMEOUT_MS),
                    "force_custom_plan",
                    "app_runtime",
                )
    finally:
        await pooled.dispose()


async def test_a_tenant_transaction_opens_in_one_message_with_the_pools_settings(
    migrated_db: harness.MigratedDatabase, pooled_settings: Settings, admin_sessions: object
) -> None:
    tenant = await provision_tenant(admin_sessions, documents=1)  # type: ignore[arg-type]
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, pooled_settings, pool_size=2, max_overflow=0)
    try:
        with traced(engine) as trace:
            async with tenant_transaction(make_sessionmaker(engine), tenant.tenant_id) as session:
                shown = (
                    await session.execute(
                        text(
                            "SELECT (SELECT setting FROM pg_settings"
                            " WHERE name = 'statement_timeout'),"
                            " current_setting('plan_cache_mode'), current_user,"
                            " current_setting('app.current_tenant_id'),"
                            " (SELECT count(*) FROM documents)"
                        )
                    )
                ).one()
    finally:
        await engine.dispose()
    # BEGIN, the pool's transaction-local settings and the tenant context: one message, then
    # the query itself (no settings statement of the engine's `begin` event in between), then
    # COMMIT.
    opening, query, commit = trace.round_trips()
    assert "Query\t \"BEGIN; SELECT set_config('statement_timeout'" in opening
    assert "set_config('app.current_tenant_id'" in opening
    assert "pg_settings" in query
    assert commit.endswith('Query\t "COMMIT"')
    assert tuple(shown) == (
        str(pooled_settings.DB_STATEMENT_TIMEOUT_MS),
        "force_custom_plan",
        "app_runtime",
        str(tenant.tenant_id),
        1,
    )


def test_no_caller_listener_through_pgbouncer_so_the_cache_stays_off(
    pooled_settings: Settings, migrated_db: harness.MigratedDatabase
) -> None:
    # A LISTEN would stay on a server connection the pooler hands to other clients.
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    database = Database(targets=targets, engine=None, sessions=None)  # type: ignore[arg-type]
    cache = CallerCache()
    assert caller_listener(database, pooled_settings, cache) is None
    assert not cache.listening
    direct = pooled_settings.model_copy(update={"DATABASE_POOL_MODE": PoolMode.SESSION})
    assert caller_listener(database, direct, cache) is not None


async def test_the_app_works_unchanged_through_pgbouncer(
    migrated_db: harness.MigratedDatabase,
    pooled_settings: Settings,
    test_issuer: TestIssuer,
    admin_sessions: object,
) -> None:
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, pooled_settings, pool_size=4, max_overflow=0)
    owner = build_engine(migrated_db.owner_url, pooled_settings, pool_size=1, max_overflow=0)
    database = Database(targets=targets, engine=engine, sessions=make_sessionmaker(engine))
    app = create_app(pooled_settings, database)
    try:
        first = await create_caller(make_sessionmaker(owner), test_issuer)
        second = await create_caller(make_sessionmaker(owner), test_issuer)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client:
            created = await client.post(
                "/api/v1/documents", json=document_body(), headers=first.headers
            )
            assert created.status_code == 201, created.text
            # More runs of each statement than psycopg's prepare threshold (5).
            for _ in range(8):
                mine = await client.get("/api/v1/documents", headers=first.headers)
                theirs = await client.get("/api/v1/documents", headers=second.headers)
                assert [d["id"] for d in mine.json()["items"]] == [created.json()["id"]]
                assert theirs.json()["items"] == []
            foreign = await client.get(
                f"/api/v1/documents/{created.json()['id']}", headers=second.headers
            )
            assert foreign.status_code == 404
    finally:
        await engine.dispose()
        await owner.dispose()


@pytest.fixture(scope="module")
async def fuzz_through_pgbouncer(
    pooled_settings: Settings,
    test_server: harness.TestServer,
    pgbouncer: Pgbouncer,
    test_issuer: TestIssuer,
) -> AsyncIterator[FuzzEnvironment]:
    """A database of its own; the app's runtime pool (five connections) through pgbouncer,
    which gives them two server connections."""
    own = harness.create_migrated_database(test_server)
    owner_url = pgbouncer.url(own.owner_url)
    fuzz_settings = pooled_settings.model_copy(
        update={"DATABASE_URL": SecretStr(owner_url.render_as_string(hide_password=False))}
    )
    targets = targets_for(owner_url, harness.RUNTIME_PASSWORD)
    runtime = build_runtime_engine(targets, fuzz_settings, pool_size=5, max_overflow=0)
    owner = build_engine(own.owner_url, fuzz_settings, pool_size=2, max_overflow=0)
    database = Database(targets=targets, engine=runtime, sessions=make_sessionmaker(runtime))
    yield FuzzEnvironment(fuzz_settings, database, make_sessionmaker(owner), test_issuer)
    await runtime.dispose()
    await owner.dispose()
    harness.drop_database(test_server, own.name)


async def test_leak_fuzz_through_pgbouncer_finds_no_leak(
    fuzz_through_pgbouncer: FuzzEnvironment,
) -> None:
    report = await fuzz(
        fuzz_through_pgbouncer,
        # The bounded fuzz's seed and tenants (tests/fuzz/test_leak_fuzz.py), fewer operations.
        seed=20261125,
        operations=300,
        tenants=20,
        concurrency=16,
        shrink_failures=False,
        strict_search=True,
    )
    print(report.summary())
    assert report.failures == [], report.summary()
    assert sum(report.ops_by_kind.values()) == 300


async def test_context_is_gone_when_a_server_connection_passes_to_another_client(
    migrated_db: harness.MigratedDatabase, pooled_settings: Settings, admin_sessions: object
) -> None:
    # Two engines (two clients of pgbouncer) over the same two server connections.
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engines = [build_runtime_engine(targets, pooled_settings, pool_size=2) for _ in range(2)]
    tenant = await provision_tenant(admin_sessions, documents=1)  # type: ignore[arg-type]
    try:
        async with tenant_transaction(make_sessionmaker(engines[0]), tenant.tenant_id) as s:
            assert len((await s.execute(text("SELECT id FROM documents"))).all()) == 1
        for engine in engines:
            for _ in range(3):
                async with engine.connect() as connection:
                    row = (
                        await connection.execute(
                            text(
                                "SELECT current_setting('app.current_tenant_id', true),"
                                " (SELECT count(*) FROM documents)"
                            )
                        )
                    ).one()
                    await connection.rollback()
                assert (row[0] or "", row[1]) == ("", 0)
    finally:
        for engine in engines:
            await engine.dispose()
