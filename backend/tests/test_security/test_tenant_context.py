"""No tenant context, an empty one, or a malformed one: never rows, never writes."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.database.session import make_sessionmaker, tenant_transaction
from tests.test_security.conftest import TENANT_TABLES, TwoTenants, sqlstate

_INSERT_DOCUMENT = text(
    "INSERT INTO documents (tenant_id, user_id, s3_key, s3_bucket, filename, content_type,"
    " size_bytes) VALUES (:tenant_id, :user_id, 'k', 'b', 'planted.pdf', 'application/pdf', 1)"
)
_INSERT_USER = text("INSERT INTO users (tenant_id, email) VALUES (:tenant_id, 'planted@x.org')")
_SETTING = text("SELECT current_setting('app.current_tenant_id', true)")
_BACKEND_PID = text("SELECT pg_backend_pid()")


async def _count(connection: AsyncConnection, table: str) -> int:
    # Table names come from the fixed TENANT_TABLES tuple, never from input.
    return int((await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def _assert_blind_and_read_only(connection: AsyncConnection, tenants: TwoTenants) -> None:
    """Without tenant context: 0 rows in every table, UPDATE touches nothing, INSERT refused."""
    for table in TENANT_TABLES:
        assert await _count(connection, table) == 0, table
    for table, column in (("documents", "filename"), ("users", "full_name")):
        updated = await connection.execute(
            text(f"UPDATE {table} SET {column} = 'overwritten' RETURNING id")
        )
        assert updated.all() == [], table
    await connection.rollback()
    values = {"tenant_id": tenants.a.tenant_id, "user_id": tenants.a.user_id}
    for insert in (_INSERT_DOCUMENT, _INSERT_USER):
        with pytest.raises(DBAPIError) as caught:
            await connection.execute(insert, values)
        assert sqlstate(caught.value) == "42501"
        assert "row-level security" in str(caught.value.orig)
        await connection.rollback()


async def test_no_tenant_context_sees_no_rows_and_cannot_write(
    single_connection_engine: AsyncEngine, tenants: TwoTenants
) -> None:
    """A runtime connection never scoped to a tenant (setting NULL) reads and writes nothing."""
    async with single_connection_engine.connect() as connection:
        assert (await connection.execute(_SETTING)).scalar() is None
        await _assert_blind_and_read_only(connection, tenants)


async def test_empty_context_left_by_earlier_transaction_sees_no_rows_and_cannot_write(
    single_connection_engine: AsyncEngine, tenants: TwoTenants
) -> None:
    """After a committed tenant transaction the setting reads '' on that connection: nothing."""
    sessions = make_sessionmaker(single_connection_engine)
    async with tenant_transaction(sessions, tenants.a.tenant_id) as session:
        assert (await session.execute(text("SELECT count(*) FROM documents"))).scalar() == 1
        tenant_pid = (await session.execute(_BACKEND_PID)).scalar()
    async with single_connection_engine.connect() as connection:
        assert (await connection.execute(_BACKEND_PID)).scalar() == tenant_pid
        assert (await connection.execute(_SETTING)).scalar() == ""
        await _assert_blind_and_read_only(connection, tenants)


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_malformed_tenant_context_is_an_error_never_rows(
    runtime_sessions: async_sessionmaker[AsyncSession], tenants: TwoTenants, table: str
) -> None:
    """A context that is not a UUID makes every policy's cast fail: an error, not all rows.

    (Overwritten inside a tenant transaction, as injected SQL would: the runtime engine is in
    autocommit mode, so outside one a transaction-local setting would not reach the next
    statement.)"""
    with pytest.raises(DBAPIError) as caught:
        async with tenant_transaction(runtime_sessions, tenants.a.tenant_id) as session:
            await session.execute(
                text("SELECT set_config('app.current_tenant_id', 'not-a-uuid', true)")
            )
            await session.execute(text(f"SELECT * FROM {table}"))
    assert sqlstate(caught.value) == "22P02"  # invalid_text_representation
