"""One tenant cannot freeze everyone's writes by locking a whole shared table."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.test_security.conftest import TENANT_TABLES, TwoTenants, refused, sqlstate


@pytest.mark.parametrize("mode", ["SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"])
# audit_chain_heads: every audit insert of every tenant goes through it, and app_runtime holds
# no privilege on it at all.
@pytest.mark.parametrize("table", [*TENANT_TABLES, "audit_chain_heads"])
async def test_runtime_role_cannot_lock_shared_tables_against_other_tenants(
    runtime_sessions: async_sessionmaker[AsyncSession],
    tenants: TwoTenants,
    table: str,
    mode: str,
) -> None:
    """Lock modes that block other writers need table-level write privileges app_runtime lacks."""
    error = await refused(
        runtime_sessions, tenants.a.tenant_id, f"LOCK TABLE {table} IN {mode} MODE"
    )
    assert sqlstate(error) == "42501"
