"""The audit-chain migration chains existing rows in (created_at, id) order and is reversible;
the models match the migrated schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from app.core.config import Settings
from app.database import migrations
from app.database.base import Base, is_outside_the_model
from app.database.engine import build_engine
from app.database.session import admin_transaction, make_sessionmaker
from app.services import audit_integrity as audit_integrity_service
from testkit import database_harness as harness
from tests.conftest import MigratedDatabase

CHAIN_REVISION = "93494aa1d1dd"
PARENT_REVISION = "be3034b43ca6"


@pytest.fixture
def unchained_db(test_server: harness.TestServer) -> Iterator[MigratedDatabase]:
    """A throw-away database migrated to just before the chain."""
    database = harness.create_migrated_database(test_server, PARENT_REVISION)
    yield database
    harness.drop_database(test_server, database.name)


def _superuser(database: MigratedDatabase) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(harness.libpq(database.superuser_url), autocommit=True)


async def test_existing_rows_are_chained_in_created_at_order_and_the_migration_reverses(
    unchained_db: MigratedDatabase, settings: Settings
) -> None:
    with _superuser(unchained_db) as conn:
        tenants = [
            conn.execute("INSERT INTO tenants (name) VALUES (%s) RETURNING id", (name,)).fetchone()[
                0
            ]  # type: ignore[index]
            for name in ("first", "second")
        ]
        # Inserted out of time order; two rows share a timestamp (id breaks the tie).
        minutes_ago = {"c": 1, "a": 3, "b2": 2, "b1": 2}
        for tenant in tenants:
            for action, minutes in minutes_ago.items():
                conn.execute(
                    "INSERT INTO audit_logs (id, tenant_id, action, resource_type, created_at)"
                    " VALUES (%s, %s, %s, 'document',"
                    " timestamptz '2025-01-01 12:00+00' - %s * interval '1 minute')",
                    (uuid.uuid4(), tenant, action, minutes),
                )

    migrations.upgrade(unchained_db.owner_url, harness.RUNTIME_PASSWORD, CHAIN_REVISION)

    with _superuser(unchained_db) as conn:
        for tenant in tenants:
            chained = conn.execute(
                "SELECT chain_seq, created_at, id FROM audit_logs WHERE tenant_id = %s"
                " ORDER BY chain_seq",
                (tenant,),
            ).fetchall()
            assert [seq for seq, _, _ in chained] == [1, 2, 3, 4]
            assert [(at, row_id) for _, at, row_id in chained] == sorted(
                (at, row_id) for _, at, row_id in chained
            )
    engine = build_engine(unchained_db.owner_url, settings, pool_size=1, max_overflow=0)
    try:
        async with admin_transaction(make_sessionmaker(engine)) as session:
            report = await audit_integrity_service.verify_chain(session)
    finally:
        await engine.dispose()
    assert report.ok, report.first_break
    assert report.heads_checked
    assert {status.tenant_id for status in report.tenants} == set(tenants)
    assert report.row_count == 8

    migrations.downgrade(unchained_db.owner_url, PARENT_REVISION)

    with _superuser(unchained_db) as conn:
        columns = {
            name
            for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'audit_logs'"
            )
        }
        leftovers = conn.execute(
            "SELECT to_regclass('audit_chain_heads'), to_regproc('chain_audit_log'),"
            " to_regproc('audit_netstring'), to_regproc('audit_log_row_hash')"
        ).fetchone()
        assert conn.execute("SELECT count(*) FROM audit_logs").fetchone() == (8,)
    assert not {"chain_seq", "prev_hash", "row_hash"} & columns
    assert leftovers == (None, None, None, None)

    migrations.upgrade(unchained_db.owner_url, harness.RUNTIME_PASSWORD, CHAIN_REVISION)
    with _superuser(unchained_db) as conn:
        assert conn.execute("SELECT count(*) FROM audit_chain_heads").fetchone() == (2,)


def test_models_match_the_migrated_schema(migrated_db: MigratedDatabase) -> None:
    engine = create_engine(migrated_db.owner_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_object": lambda obj, name, type_, reflected, compare_to: (
                        not is_outside_the_model(obj, name, type_)
                    ),
                },
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
