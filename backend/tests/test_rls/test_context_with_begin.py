"""The tenant context rides with BEGIN in a transaction's first round trip (`enter_tenant`).

`tenant_transaction` opens its transaction with one simple query, `BEGIN; SELECT
set_config(...)`, sent straight to psycopg on the runtime engine's autocommit connection. These
tests run the query shapes the app sends (joins, ordered pages, aggregates, RLS alone) as the
first statement after it, on fresh transactions, more than five times each so psycopg's
prepared statements are exercised too, and check each sees exactly its tenant's rows, that the
context holds for the rest of the transaction and ends with it, that a rollback undoes the
transaction's writes and leaves no transaction open on the pooled connection, that the
isolation level asked for is the transaction's, and that a driver error in the opening comes
out as SQLAlchemy's (a lost connection invalidated, the next transaction on a new one).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Select, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import make_sessionmaker, tenant_transaction
from app.database.tenant_context import IsolationLevel, opening_sql
from app.models import AuditLog, Document, Tenant, User
from testkit import database_harness as harness
from testkit.factories import ProvisionedTenant, provision_tenant
from tests.conftest import MigratedDatabase

RUNS = 7  # psycopg prepares a statement on its 5th execution


def _caller_like(tenant_id: uuid.UUID) -> Select[Any]:
    return (
        select(User.id, Tenant.status)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(User.tenant_id == tenant_id, Tenant.id == tenant_id, User.deleted_at.is_(None))
    )


def _newest_page(tenant_id: uuid.UUID) -> Select[Any]:
    return (
        select(Document.id)
        .where(Document.tenant_id == tenant_id, Document.deleted_at.is_(None))
        .order_by(Document.created_at.desc(), Document.id.desc())
        .limit(50)
    )


def _count(tenant_id: uuid.UUID) -> Select[Any]:
    return select(func.count().label("n")).where(Document.tenant_id == tenant_id)


def _no_explicit_filter(_tenant_id: uuid.UUID) -> Select[Any]:
    # RLS alone scopes this one: the policy is the only tenant condition.
    return select(Document.id)


@pytest.fixture
async def two_tenants(
    admin_sessions: async_sessionmaker[AsyncSession],
) -> tuple[ProvisionedTenant, ProvisionedTenant]:
    return (
        await provision_tenant(admin_sessions, users=2, documents=3),
        await provision_tenant(admin_sessions, users=1, documents=2),
    )


@pytest.mark.parametrize("shape", [_caller_like, _newest_page, _no_explicit_filter])
async def test_the_first_statement_sees_exactly_its_tenants_rows(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
    shape: Any,
) -> None:
    for _ in range(RUNS):
        for tenant in two_tenants:
            async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
                rows = (await session.execute(shape(tenant.tenant_id))).all()
            expected = tenant.user_ids if shape is _caller_like else tenant.document_ids
            assert sorted(row[0] for row in rows) == sorted(expected)


async def test_an_aggregate_counts_only_its_tenant(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    for _ in range(RUNS):
        for tenant in two_tenants:
            async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
                count = await session.scalar(_count(tenant.tenant_id))
            assert count == len(tenant.document_ids)


async def test_asking_for_another_tenants_rows_still_finds_none(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    mine, theirs = two_tenants
    async with tenant_transaction(runtime_sessions, mine.tenant_id) as session:
        rows = (await session.execute(_newest_page(theirs.tenant_id))).all()
    assert rows == []


async def test_the_context_holds_for_the_rest_of_the_transaction_and_ends_with_it(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    tenant = two_tenants[0]
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        later = set((await session.scalars(select(Document.id))).all())
        audit_rows = await session.scalar(select(func.count()).select_from(AuditLog))
        setting = await session.scalar(text("SELECT current_setting('app.current_tenant_id')"))
    assert later == set(tenant.document_ids)
    assert audit_rows is not None
    assert setting == str(tenant.tenant_id)
    # A transaction opened without the primitive has no context: it sees nothing.
    async with runtime_sessions() as session, session.begin():
        after = (await session.scalars(select(Document.id))).all()
        leftover = await session.scalar(
            text("SELECT current_setting('app.current_tenant_id', true)")
        )
    assert after == []
    assert leftover in (None, "")


async def test_without_the_context_the_same_query_sees_nothing(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    # The control for the tests above: the rows they see come from the context.
    tenant = two_tenants[0]
    async with runtime_sessions() as session, session.begin():
        rows = (await session.execute(_newest_page(tenant.tenant_id))).all()
    assert rows == []


async def test_a_rollback_undoes_the_transactions_writes_and_leaves_nothing_open(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    tenant = two_tenants[0]

    async def write_then_fail() -> None:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            await session.execute(
                text("UPDATE documents SET filename = 'rolled back' WHERE tenant_id = :t"),
                {"t": tenant.tenant_id},
            )
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        await write_then_fail()
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        names = set((await session.scalars(text("SELECT filename FROM documents"))).all())
    assert "rolled back" not in names
    # The pool hands the connection on in autocommit mode with no transaction open: the next
    # tenant transaction's BEGIN is the first in it.
    async with runtime_sessions() as session:
        connection = await session.connection()
        raw = await connection.get_raw_connection()
        assert raw.driver_connection is not None
        assert raw.driver_connection.autocommit is True
        assert raw.driver_connection.info.transaction_status == TransactionStatus.IDLE


@pytest.mark.parametrize(
    ("isolation", "shown"),
    [(None, "read committed"), ("REPEATABLE READ", "repeatable read")],
)
async def test_the_transaction_has_the_isolation_level_asked_for(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
    isolation: IsolationLevel | None,
    shown: str,
) -> None:
    # The tenant export reads one snapshot for its whole archive (REPEATABLE READ).
    tenant = two_tenants[0]
    transaction = tenant_transaction(runtime_sessions, tenant.tenant_id, isolation=isolation)
    async with transaction as session:
        level = await session.scalar(text("SHOW transaction_isolation"))
        seen = set((await session.scalars(select(Document.id))).all())
    assert level == shown
    assert seen == set(tenant.document_ids)


def test_an_unknown_isolation_level_is_refused_before_any_io() -> None:
    with pytest.raises(ValueError, match="isolation must be one of"):
        opening_sql(uuid.uuid4(), isolation="READ COMMITTED; DROP TABLE documents")  # type: ignore[arg-type]


async def test_an_engine_that_is_not_autocommit_is_refused(
    admin_sessions: async_sessionmaker[AsyncSession],
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    # psycopg would send a BEGIN of its own before the opening's.
    with pytest.raises(RuntimeError, match="need an autocommit engine"):
        async with tenant_transaction(admin_sessions, two_tenants[0].tenant_id):
            pass


async def test_a_lost_connection_in_the_opening_is_sqlalchemys_error_and_invalidated(
    settings: Settings,
    migrated_db: MigratedDatabase,
    two_tenants: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    tenant = two_tenants[0]
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, settings, pool_size=1, max_overflow=0)
    sessions = make_sessionmaker(engine)
    try:
        async with tenant_transaction(sessions, tenant.tenant_id) as session:
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
        superuser = harness.libpq(migrated_db.superuser_url)
        async with await psycopg.AsyncConnection.connect(superuser, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        # The pool's one connection is dead: the opening is the first to find out.
        with pytest.raises(DBAPIError) as raised:
            async with tenant_transaction(sessions, tenant.tenant_id):
                pass
        assert raised.value.connection_invalidated
        async with tenant_transaction(sessions, tenant.tenant_id) as session:
            seen = set((await session.scalars(select(Document.id))).all())
    finally:
        await engine.dispose()
    assert seen == set(tenant.document_ids)


def test_only_a_uuid_is_accepted() -> None:
    with pytest.raises(TypeError, match=r"tenant_id must be a uuid\.UUID"):
        opening_sql("' OR true --")  # type: ignore[arg-type]
