"""A request that fails half-way leaves nothing on its pooled connection for the next one.

Every engine here has a pool of exactly one connection, so the next checkout is provably the
connection the failed request used (same backend pid).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.config import Settings
from app.database.engine import build_engine
from app.database.roles import RUNTIME_ROLE
from app.database.session import admin_transaction, make_sessionmaker, tenant_transaction
from testkit import database_harness as harness
from tests.conftest import MigratedDatabase
from tests.test_security.conftest import TwoTenants, sqlstate

_STATE = text(
    """
    SELECT pg_backend_pid() AS pid,
           coalesce(current_setting('app.current_tenant_id', true), '') AS tenant,
           current_user AS role,
           current_setting('statement_timeout') AS statement_timeout,
           current_setting('work_mem') AS work_mem,
           current_setting('search_path') AS search_path,
           current_setting('row_security') AS row_security,
           current_setting('hnsw.ef_search') AS hnsw_ef_search,
           current_setting('hnsw.iterative_scan') AS hnsw_iterative_scan
    """
)
_WHO = text("SELECT current_user")
_WHO_AND_TIMEOUT = text("SELECT current_user, current_setting('statement_timeout')")
# Loads pgvector in the backend, so its hnsw.* settings exist before they are read.
_LOAD_VECTOR = text("SELECT '[1,2,3]'::vector <=> '[1,2,4]'")
_CHANGE_EVERYTHING = [
    "SET LOCAL statement_timeout = '1h'",
    "SET LOCAL work_mem = '64MB'",
    "SET LOCAL search_path = pg_temp, public",
    "SET LOCAL hnsw.ef_search = 999",
    "SET LOCAL hnsw.iterative_scan = relaxed_order",
]


async def _state(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as connection:
        await connection.execute(_LOAD_VECTOR)
        state = dict((await connection.execute(_STATE)).mappings().one())
        await connection.rollback()
        return state


def _without_pid(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in state.items() if key != "pid"}


async def _change_everything(session: AsyncSession) -> None:
    for statement in _CHANGE_EVERYTHING:
        await session.execute(text(statement))
    changed = dict((await session.execute(_STATE)).mappings().one())
    assert changed["tenant"] != ""
    assert changed["hnsw_ef_search"] == "999"


@pytest.fixture
async def clean_state(single_connection_engine: AsyncEngine, tenants: TwoTenants) -> dict[str, Any]:
    """The pooled connection's state before the failing request."""
    state = await _state(single_connection_engine)
    assert state["tenant"] == ""
    assert state["role"] == RUNTIME_ROLE
    return state


async def test_exception_mid_request_leaves_connection_clean(
    single_connection_engine: AsyncEngine, tenants: TwoTenants, clean_state: dict[str, Any]
) -> None:
    """An exception after settings were changed: the next checkout is the clean connection."""
    sessions = make_sessionmaker(single_connection_engine)
    with pytest.raises(RuntimeError, match="handler failed"):
        async with tenant_transaction(sessions, tenants.a.tenant_id) as session:
            await _change_everything(session)
            raise RuntimeError("handler failed")
    assert await _state(single_connection_engine) == clean_state


async def test_statement_timeout_mid_request_leaves_connection_clean(
    single_connection_engine: AsyncEngine, tenants: TwoTenants, clean_state: dict[str, Any]
) -> None:
    """A statement cancelled by a (tiny, local) statement_timeout: 57014, then a clean checkout."""
    sessions = make_sessionmaker(single_connection_engine)
    with pytest.raises(DBAPIError) as caught:
        async with tenant_transaction(sessions, tenants.a.tenant_id) as session:
            await _change_everything(session)
            await session.execute(text("SET LOCAL statement_timeout = '50ms'"))
            await session.execute(text("SELECT pg_sleep(5)"))
    assert sqlstate(caught.value) == "57014"  # query_canceled
    assert await _state(single_connection_engine) == clean_state


async def test_client_cancel_mid_request_leaves_connection_clean(
    single_connection_engine: AsyncEngine,
    superuser: psycopg.Connection[Any],
    tenants: TwoTenants,
    clean_state: dict[str, Any],
) -> None:
    """The client goes away mid-query (task cancelled): no context survives, the query stops."""
    sessions = make_sessionmaker(single_connection_engine)
    marker = uuid.uuid4().hex
    started = asyncio.Event()

    async def request() -> None:
        async with tenant_transaction(sessions, tenants.a.tenant_id) as session:
            await _change_everything(session)
            started.set()
            await session.execute(text(f"SELECT pg_sleep(30) /* {marker} */"))

    task = asyncio.create_task(request())
    await started.wait()
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # SQLAlchemy invalidates a connection whose statement was interrupted by a cancel, so the
    # next checkout may be a new backend; whichever it is, it must be clean.
    after = await _state(single_connection_engine)
    assert _without_pid(after) == _without_pid(clean_state)
    still_running = superuser.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
        (f"%{marker}%",),
    ).fetchone()
    assert still_running == (0,)


async def test_failed_admin_transaction_leaves_no_role_change(
    settings: Settings, migrated_db: MigratedDatabase
) -> None:
    """The provisioning switch to app_admin is transaction-local: gone after a failure."""
    engine = build_engine(migrated_db.owner_url, settings, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            before = (await connection.execute(_WHO_AND_TIMEOUT)).one()
        sessions = make_sessionmaker(engine)
        with pytest.raises(RuntimeError, match="provisioning failed"):
            async with admin_transaction(sessions) as session:
                assert (await session.execute(_WHO)).scalar() == "app_admin"
                await session.execute(text("SET LOCAL statement_timeout = '1h'"))
                raise RuntimeError("provisioning failed")
        async with engine.connect() as connection:
            after = (await connection.execute(_WHO_AND_TIMEOUT)).one()
    finally:
        await engine.dispose()
    assert before[0] == harness.MIGRATOR_ROLE
    assert after == before
