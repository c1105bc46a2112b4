"""In the strong login mode there is no other role to fall back to or switch into."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.roles import RUNTIME_ROLE
from app.database.session import tenant_transaction
from tests.conftest import MigratedDatabase
from tests.test_security.conftest import TwoTenants, refused, sqlstate

_WHO = text("SELECT current_user, session_user")


@pytest.mark.parametrize("statement", ["RESET ROLE", "SET ROLE NONE", "SET LOCAL ROLE NONE"])
async def test_reset_role_keeps_runtime_role_and_its_policies(
    runtime_sessions: async_sessionmaker[AsyncSession], tenants: TwoTenants, statement: str
) -> None:
    """Resetting the role lands on the login, which is app_runtime itself: still tenant a only."""
    async with tenant_transaction(runtime_sessions, tenants.a.tenant_id) as session:
        await session.execute(text(statement))
        assert (await session.execute(_WHO)).one() == (RUNTIME_ROLE, RUNTIME_ROLE)
        tenant_ids = (await session.execute(text("SELECT DISTINCT tenant_id FROM documents"))).all()
        assert tenant_ids == [(tenants.a.tenant_id,)]
        await session.rollback()


@pytest.mark.parametrize(
    "statement",
    [
        "SET SESSION AUTHORIZATION app_migrator",
        "SET SESSION AUTHORIZATION {superuser}",
        "SET ROLE app_admin",
        "SET ROLE app_migrator",
        "SELECT set_config('role', 'app_admin', true)",
    ],
)
async def test_switching_to_a_privileged_role_is_refused(
    runtime_sessions: async_sessionmaker[AsyncSession],
    migrated_db: MigratedDatabase,
    tenants: TwoTenants,
    statement: str,
) -> None:
    """app_runtime is a member of no role and no superuser: every switch is refused."""
    superuser = migrated_db.superuser_url.username
    error = await refused(
        runtime_sessions, tenants.a.tenant_id, statement.format(superuser=superuser)
    )
    assert sqlstate(error) == "42501"
    assert "permission denied" in str(error.orig)
