"""RLS, the runtime role and the tenant context hold on a read replica as on the primary.

The read-only isolation tests run here again, unchanged, with `runtime_sessions` (and the
pooled-connection tests' logins) on a streaming replica: data is provisioned on the primary
and applied on the replica before the commit returns (testkit/replication.py).
"""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database.session import tenant_transaction
from testkit import database_harness as harness
from testkit.factories import provision_tenant
from tests.replica_database import ReplicaDatabase
from tests.test_rls.test_pooled_connections import (
    test_a_rolled_back_transaction_leaves_no_context_behind,
    test_many_concurrent_tenants_over_a_two_connection_pool_each_see_their_own,
)
from tests.test_rls.test_runtime_role import (
    test_request_session_runs_as_app_runtime_bound_by_forced_rls,
)
from tests.test_rls.test_tenant_isolation import (
    test_documents_of_another_tenant_are_invisible,
    test_users_of_another_tenant_are_invisible,
    two_tenants,
)

__all__ = [  # collected here again, against the replica
    "test_a_rolled_back_transaction_leaves_no_context_behind",
    "test_documents_of_another_tenant_are_invisible",
    "test_many_concurrent_tenants_over_a_two_connection_pool_each_see_their_own",
    "test_request_session_runs_as_app_runtime_bound_by_forced_rls",
    "test_users_of_another_tenant_are_invisible",
    "two_tenants",
]


@pytest.fixture
def admin_sessions(replica_database: ReplicaDatabase) -> async_sessionmaker[AsyncSession]:
    """Provisioning on the primary (applied on the replica before the commit returns)."""
    return replica_database.primary.admin_sessions


@pytest.fixture
def runtime_sessions(replica_database: ReplicaDatabase) -> async_sessionmaker[AsyncSession]:
    """app_runtime's own login, on the replica."""
    return replica_database.replica_runtime_sessions


@pytest.fixture
def migrated_db(replica_database: ReplicaDatabase) -> harness.MigratedDatabase:
    """The pair's database, its logins pointing at the replica."""
    on_primary = replica_database.primary.migrated_db
    return dataclasses.replace(
        on_primary, owner_url=replica_database.pair.replica_url(on_primary.owner_url)
    )


@pytest.fixture
def settings(replica_database: ReplicaDatabase) -> Settings:
    """The replica pair's settings."""
    return replica_database.settings


async def test_these_sessions_are_the_replicas(
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        in_recovery = await session.scalar(text("SELECT pg_is_in_recovery()"))
        read_only = await session.scalar(text("SHOW transaction_read_only"))
    assert (in_recovery, read_only) == (True, "on")
