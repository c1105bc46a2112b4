"""Faults: a backend killed mid-transaction stores nothing; a slow statement is cut off cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import make_sessionmaker, tenant_transaction
from app.models import AuditLog, User
from testkit import database_harness as harness
from testkit.factories import make_document
from tests.conftest import MigratedDatabase
from tests.test_security.conftest import TwoTenants, admin_scalar, sqlstate

SLOW_STATEMENT_TIMEOUT_MS = 200
_PID = text("SELECT pg_backend_pid()")


@pytest.fixture
async def impatient_engine(
    settings: Settings, migrated_db: MigratedDatabase
) -> AsyncIterator[AsyncEngine]:
    """A runtime engine built from Settings with a 200 ms statement timeout, pool of one."""
    impatient = settings.model_copy(update={"DB_STATEMENT_TIMEOUT_MS": SLOW_STATEMENT_TIMEOUT_MS})
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, impatient, pool_size=1, max_overflow=0)
    yield engine
    await engine.dispose()


async def test_backend_killed_before_commit_stores_neither_document_nor_audit_row(
    single_connection_engine: AsyncEngine,
    admin_sessions: async_sessionmaker[AsyncSession],
    superuser: psycopg.Connection[Any],
    tenants: TwoTenants,
) -> None:
    """pg_terminate_backend between the writes and COMMIT: the create is all-or-nothing."""
    sessions = make_sessionmaker(single_connection_engine)
    s3_key = f"killed/{tenants.a.tenant_id}.pdf"
    with pytest.raises(DBAPIError):
        async with tenant_transaction(sessions, tenants.a.tenant_id) as session:
            user = await session.get_one(User, tenants.a.user_id)
            document = await make_document(session, user, s3_key=s3_key)
            await AuditLog.create(
                session,
                tenant_id=tenants.a.tenant_id,
                user_id=user.id,
                action="document.create",
                resource_type="document",
                resource_id=document.id,
            )
            pid = (await session.execute(_PID)).scalar_one()
            terminated = superuser.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
            assert terminated == (True,)
    stored_documents = await admin_scalar(
        admin_sessions, "SELECT count(*) FROM documents WHERE s3_key = :key", {"key": s3_key}
    )
    stored_audit = await admin_scalar(
        admin_sessions,
        "SELECT count(*) FROM audit_logs WHERE resource_id = :id",
        {"id": document.id},
    )
    assert (stored_documents, stored_audit) == (0, 0)
    # The pool replaced the dead connection: the next request just works.
    async with tenant_transaction(sessions, tenants.a.tenant_id) as session:
        assert (await session.execute(_PID)).scalar_one() != pid


async def test_statement_over_statement_timeout_is_cancelled_and_connection_returns_clean(
    impatient_engine: AsyncEngine, tenants: TwoTenants
) -> None:
    """DB_STATEMENT_TIMEOUT_MS reaches the server; a slow statement fails with 57014."""
    sessions = make_sessionmaker(impatient_engine)
    with pytest.raises(DBAPIError) as caught:
        async with tenant_transaction(sessions, tenants.a.tenant_id) as session:
            pid = (await session.execute(_PID)).scalar_one()
            await session.execute(text("SELECT pg_sleep(2)"))
    assert sqlstate(caught.value) == "57014"  # query_canceled
    async with impatient_engine.connect() as connection:
        state = (
            await connection.execute(
                text(
                    "SELECT pg_backend_pid(), current_setting('app.current_tenant_id', true),"
                    " current_setting('statement_timeout'), current_user"
                )
            )
        ).one()
    assert state == (pid, "", f"{SLOW_STATEMENT_TIMEOUT_MS}ms", "app_runtime")
    async with tenant_transaction(sessions, tenants.a.tenant_id) as session:
        count = (await session.execute(text("SELECT count(*) FROM documents"))).scalar_one()
    assert count == 1


async def test_waiting_on_a_row_lock_is_bounded_by_the_configured_timeout(
    impatient_engine: AsyncEngine, superuser: psycopg.Connection[Any], tenants: TwoTenants
) -> None:
    """A writer stuck behind another's row lock gives up instead of piling up.

    The engine sets lock_timeout = statement_timeout, so whichever fires first ends the wait.
    """
    sessions = make_sessionmaker(impatient_engine)
    with superuser.transaction():
        superuser.execute(
            "SELECT 1 FROM documents WHERE id = %s FOR UPDATE", (tenants.a.document_id,)
        )
        with pytest.raises(DBAPIError) as caught:
            async with tenant_transaction(sessions, tenants.a.tenant_id) as session:
                await session.execute(
                    text("UPDATE documents SET filename = 'late.pdf' WHERE id = :id"),
                    {"id": tenants.a.document_id},
                )
    assert sqlstate(caught.value) in ("55P03", "57014")  # lock_not_available, query_canceled
