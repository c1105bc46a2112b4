"""idempotency_keys under RLS as app_runtime: a tenant reads and writes only its own records,
never deletes any, and cannot rewrite who or which key a record belongs to."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import tenant_transaction
from app.services import idempotency as idempotency_service
from testkit.database_harness import sqlstate
from testkit.factories import ProvisionedTenant, provision_tenant

INSUFFICIENT_PRIVILEGE = "42501"
_STORED = idempotency_service.StoredResponse(201, {"content-type": "application/json"}, b"{}")
_FINGERPRINT = bytes(32)


@pytest.fixture
async def two_tenants_with_keys(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> tuple[ProvisionedTenant, ProvisionedTenant]:
    """Tenants A and B, each with one record under the key "same-key"."""
    tenants = (
        await provision_tenant(admin_sessions, users=1, documents=0),
        await provision_tenant(admin_sessions, users=1, documents=0),
    )
    for tenant in tenants:
        scope = idempotency_service.IdempotencyScope(
            tenant.tenant_id, tenant.user_ids[0], "same-key"
        )
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            await idempotency_service.record(
                session, scope, _FINGERPRINT, _STORED, timedelta(hours=1)
            )
    return tenants


async def test_records_of_another_tenant_are_invisible_and_unclaimable(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants_with_keys: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    first, second = two_tenants_with_keys
    async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
        seen = (await session.execute(text("SELECT tenant_id FROM idempotency_keys"))).all()
        # Claiming B's exact scope from A's transaction finds nothing to replay.
        scope = idempotency_service.IdempotencyScope(
            second.tenant_id, second.user_ids[0], "same-key"
        )
        assert await idempotency_service.claim(session, scope, _FINGERPRINT) is None
    assert {row[0] for row in seen} == {first.tenant_id}


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM idempotency_keys",
        "UPDATE idempotency_keys SET idempotency_key = 'other'",
        "UPDATE idempotency_keys SET user_id = tenant_id",
        "TRUNCATE idempotency_keys",
    ],
)
async def test_runtime_may_not_delete_or_rekey_records(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants_with_keys: tuple[ProvisionedTenant, ProvisionedTenant],
    statement: str,
) -> None:
    first, _ = two_tenants_with_keys
    with pytest.raises(DBAPIError) as caught:
        async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
            await session.execute(text(statement))
    assert sqlstate(caught.value) == INSUFFICIENT_PRIVILEGE


async def test_writing_a_record_for_another_tenant_is_refused(
    runtime_sessions: async_sessionmaker[AsyncSession],
    two_tenants_with_keys: tuple[ProvisionedTenant, ProvisionedTenant],
) -> None:
    first, second = two_tenants_with_keys
    scope = idempotency_service.IdempotencyScope(second.tenant_id, second.user_ids[0], "planted")
    with pytest.raises(DBAPIError) as caught:
        async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
            await idempotency_service.record(
                session, scope, _FINGERPRINT, _STORED, timedelta(hours=1)
            )
    assert sqlstate(caught.value) == INSUFFICIENT_PRIVILEGE
