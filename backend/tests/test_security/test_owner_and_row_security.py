"""Neither the table owner nor `SET row_security = off` gets around the policies."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import tenant_transaction
from testkit import database_harness as harness
from tests.conftest import MigratedDatabase
from tests.test_security.conftest import TENANT_TABLES, TwoTenants, sqlstate


def test_table_owner_sees_no_rows_under_force(
    migrated_db: MigratedDatabase, superuser: psycopg.Connection[Any], tenants: TwoTenants
) -> None:
    """The migrating login owns every table, yet FORCE plus app_runtime-only policies hide all."""
    with psycopg.connect(harness.libpq(migrated_db.owner_url), autocommit=True) as owner:
        for table in TENANT_TABLES:
            owner_of = superuser.execute(
                "SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = %s",
                (table,),
            ).fetchone()
            assert owner_of == (harness.MIGRATOR_ROLE,)
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            assert superuser.execute(query).fetchone()[0] > 0  # type: ignore[index]
            assert owner.execute(query).fetchone() == (0,), table
            # row_security = off does not help the owner either: FORCE makes it an error.
            with pytest.raises(errors.InsufficientPrivilege), owner.transaction():
                owner.execute("SET LOCAL row_security = off")
                owner.execute(query)


def test_table_owner_cannot_insert_under_force(
    migrated_db: MigratedDatabase, tenants: TwoTenants
) -> None:
    """No policy admits the owner, so its writes are refused like any unscoped writer's."""
    with (
        psycopg.connect(harness.libpq(migrated_db.owner_url), autocommit=True) as owner,
        pytest.raises(errors.InsufficientPrivilege, match="row-level security"),
    ):
        owner.execute(
            "INSERT INTO users (tenant_id, email) VALUES (%s, 'owner-planted@x.org')",
            (tenants.b.tenant_id,),
        )


async def test_row_security_off_as_runtime_errors_instead_of_bypassing(
    runtime_sessions: async_sessionmaker[AsyncSession], tenants: TwoTenants
) -> None:
    """`SET row_security = off` makes a policy-bound query fail; it never returns all rows."""
    for table in TENANT_TABLES:
        with pytest.raises(DBAPIError) as caught:
            async with tenant_transaction(runtime_sessions, tenants.a.tenant_id) as session:
                await session.execute(text("SET LOCAL row_security = off"))
                await session.execute(text(f"SELECT * FROM {table}"))
        assert sqlstate(caught.value) == "42501"
        assert "row-level security" in str(caught.value.orig)
