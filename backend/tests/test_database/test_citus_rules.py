"""The migrated schema follows every rule Citus sets for tables distributed by tenant (issue 22)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database import citus
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import make_sessionmaker, tenant_transaction
from app.models import Document
from testkit import database_harness as harness
from testkit.factories import provision_tenant
from testkit.protocol_trace import traced
from tests.conftest import MigratedDatabase


async def test_the_migrated_schema_breaks_no_citus_rule(owner_engine: AsyncEngine) -> None:
    async with owner_engine.connect() as connection:
        problems = await connection.run_sync(citus.rule_violations)
        tables = await connection.run_sync(citus.distributed_tables)
    assert problems == []
    assert tables["tenants"].column == "id"
    for name in ("users", "documents", "audit_logs", "audit_chain_heads"):
        assert tables[name].column == "tenant_id"


# Each table breaks one rule; the checker must name it.
BROKEN_TABLES = {
    "CREATE TABLE citus_pk_without_tenant (id uuid PRIMARY KEY, tenant_id uuid NOT NULL)": (
        "citus_pk_without_tenant: primary key"
    ),
    "CREATE TABLE citus_unique_without_tenant (tenant_id uuid NOT NULL, email text UNIQUE, "
    "PRIMARY KEY (tenant_id, email))": "citus_unique_without_tenant: unique index",
    "CREATE TABLE citus_partial_unique (tenant_id uuid NOT NULL, id uuid, code text, "
    "PRIMARY KEY (tenant_id, id)); CREATE UNIQUE INDEX citus_partial_unique_code "
    "ON citus_partial_unique (code) WHERE code IS NOT NULL": "citus_partial_unique: unique index",
    "CREATE TABLE citus_fk_without_tenant (tenant_id uuid NOT NULL, id uuid, document_id uuid, "
    "PRIMARY KEY (tenant_id, id), FOREIGN KEY (tenant_id, document_id) "
    "REFERENCES documents (tenant_id, id)); ALTER TABLE citus_fk_without_tenant ADD CONSTRAINT "
    "citus_fk_id_only FOREIGN KEY (document_id, tenant_id) REFERENCES documents (tenant_id, id)": (
        "foreign key citus_fk_id_only"
    ),
    "CREATE TABLE citus_nullable_tenant (tenant_id uuid, id uuid, "
    "UNIQUE (tenant_id, id))": "citus_nullable_tenant: tenant_id must be NOT NULL",
    "CREATE TABLE citus_no_key (tenant_id uuid NOT NULL, body text)": (
        "citus_no_key: no primary key"
    ),
    "CREATE TABLE citus_global_table (id uuid PRIMARY KEY)": "citus_global_table: no tenant_id",
}


@pytest.mark.parametrize("ddl", list(BROKEN_TABLES))
async def test_a_table_breaking_a_rule_is_named(owner_engine: AsyncEngine, ddl: str) -> None:
    async with owner_engine.connect() as connection:
        transaction = await connection.begin()
        try:
            for statement in ddl.split("; "):
                await connection.execute(text(statement))
            problems = await connection.run_sync(citus.rule_violations)
        finally:
            await transaction.rollback()
    assert any(BROKEN_TABLES[ddl] in problem for problem in problems), problems


async def test_citus_mode_also_sets_the_context_with_set_local(
    settings: Settings,
    migrated_db: MigratedDatabase,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    first = await provision_tenant(admin_sessions, documents=1)
    await provision_tenant(admin_sessions, documents=1)  # another tenant's row, not seen
    citus_settings = settings.model_copy(update={"DATABASE_CITUS": True})
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, citus_settings, pool_size=1, max_overflow=0)
    try:
        with traced(engine) as trace:
            async with tenant_transaction(make_sessionmaker(engine), first.tenant_id) as session:
                seen = set((await session.scalars(select(Document.id))).all())
                setting = await session.scalar(text("SHOW app.current_tenant_id"))
    finally:
        await engine.dispose()
    # In the opening message, after its BEGIN: inside the transaction block Citus propagates.
    opening, *_ = trace.statements()
    assert opening.endswith(f"; SET LOCAL app.current_tenant_id = '{first.tenant_id}'")
    assert opening.startswith("BEGIN; SELECT ")
    assert setting == str(first.tenant_id)
    assert seen == set(first.document_ids)
