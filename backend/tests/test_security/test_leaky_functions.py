"""A leaky function in a WHERE clause sees only the caller's rows; app_runtime creates nothing."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import tenant_transaction
from tests.test_security.conftest import TwoTenants, refused, sqlstate


@pytest.fixture
def leaky_function(superuser: psycopg.Connection[Any]) -> Any:
    """A function that RAISEs a NOTICE with its argument; cheap, so the planner runs it early."""
    name = f"leak_{uuid.uuid4().hex[:8]}"
    superuser.execute(
        sql.SQL(
            "CREATE FUNCTION {}(value text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001"
            " AS $$ BEGIN RAISE NOTICE 'leaked: %', value; RETURN true; END $$"
        ).format(sql.Identifier(name))
    )
    superuser.execute(
        sql.SQL("GRANT EXECUTE ON FUNCTION {}(text) TO app_runtime").format(sql.Identifier(name))
    )
    yield name
    superuser.execute(sql.SQL("DROP FUNCTION {}(text)").format(sql.Identifier(name)))


async def test_leaky_function_in_where_clause_sees_only_callers_rows(
    runtime_sessions: async_sessionmaker[AsyncSession], tenants: TwoTenants, leaky_function: str
) -> None:
    """The policy is a security barrier: the leak is applied after it, to tenant a's rows only."""
    notices: list[str] = []
    async with tenant_transaction(runtime_sessions, tenants.a.tenant_id) as session:
        raw = await (await session.connection()).get_raw_connection()
        driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]

        def capture(diagnostic: psycopg.errors.Diagnostic) -> None:
            notices.append(diagnostic.message_primary or "")

        # Sequential scans read every tenant's rows, so only the qual order (policy first, as a
        # security barrier) stands between the function and tenant b's values. (Marking the
        # function LEAKPROOF lets the planner run it first, and this test then fails.)
        for planner_switch in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
            await session.execute(text(f"SET LOCAL {planner_switch} = off"))
        driver.add_notice_handler(capture)
        try:
            for query in (
                f"SELECT id FROM documents WHERE {leaky_function}(filename)",
                f"SELECT id FROM users WHERE {leaky_function}(email || ' ' || id::text)",
                f"SELECT id FROM tenants WHERE {leaky_function}(name)",
                f"SELECT id FROM documents WHERE {leaky_function}(filename) OR filename LIKE 'b-%'",
            ):
                await session.execute(text(query))
        finally:
            driver.remove_notice_handler(capture)
    assert f"leaked: {tenants.a.filename}" in notices
    leaked = "\n".join(notices)
    assert tenants.b.filename not in leaked
    assert str(tenants.b.user_id) not in leaked
    assert str(tenants.a.user_id) in leaked  # the users query did run through the function


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE FUNCTION own_leak(text) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        "CREATE FUNCTION pg_temp.own_leak(text) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        "CREATE OPERATOR === (LEFTARG = text, RIGHTARG = text, FUNCTION = texteq)",
        "CREATE TEMPORARY TABLE stash (id uuid)",
        "CREATE TABLE stash (id uuid)",
        "CREATE VIEW all_documents AS SELECT * FROM documents",
        "CREATE MATERIALIZED VIEW stash AS SELECT * FROM documents",
        "CREATE SCHEMA stash",
    ],
    ids=[
        "function",
        "temp-function",
        "operator",
        "temp-table",
        "table",
        "view",
        "matview",
        "schema",
    ],
)
async def test_runtime_role_cannot_create_objects(
    runtime_sessions: async_sessionmaker[AsyncSession], tenants: TwoTenants, statement: str
) -> None:
    """app_runtime owns nothing and may create nothing: no functions, operators, tables, views."""
    error = await refused(runtime_sessions, tenants.a.tenant_id, statement)
    assert sqlstate(error) == "42501"  # insufficient_privilege
    assert "permission denied" in str(error.orig)
