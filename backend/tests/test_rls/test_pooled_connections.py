"""A pooled connection never carries one transaction's tenant into the next."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import make_sessionmaker, tenant_transaction
from app.models import Document
from testkit import database_harness as harness
from testkit.factories import ProvisionedTenant, provision_tenant
from tests.conftest import MigratedDatabase


async def test_many_concurrent_tenants_over_a_two_connection_pool_each_see_their_own(
    settings: Settings,
    migrated_db: MigratedDatabase,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenants = [await provision_tenant(admin_sessions, documents=2) for _ in range(6)]
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, settings, pool_size=2, max_overflow=0)
    sessions = make_sessionmaker(engine)
    backends: set[int] = set()

    async def read_as(tenant: ProvisionedTenant) -> tuple[ProvisionedTenant, set[uuid.UUID]]:
        async with tenant_transaction(sessions, tenant.tenant_id) as session:
            backends.add(int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
            await session.execute(text("SELECT pg_sleep(0.002)"))
            ids = set((await session.scalars(select(Document.id))).all())
        return tenant, ids

    async def read_without_context() -> tuple[str | None, int]:
        async with sessions() as session, session.begin():
            setting = (
                await session.execute(text("SELECT current_setting('app.current_tenant_id', true)"))
            ).scalar_one()
            count = (await session.execute(text("SELECT count(*) FROM documents"))).scalar_one()
        return setting, int(count)

    try:
        work = [read_as(tenant) for _ in range(8) for tenant in tenants]
        results = await asyncio.gather(*work)
        # Every pooled connection has now served tenants; none may remember one.
        leftovers = await asyncio.gather(*(read_without_context() for _ in range(6)))
    finally:
        await engine.dispose()

    assert len(backends) == 2  # the 48 transactions really shared two connections
    for tenant, ids in results:
        assert ids == set(tenant.document_ids)
    for setting, count in leftovers:
        assert setting in (None, "")
        assert count == 0


class _HandlerFailedError(Exception):
    pass


async def test_a_rolled_back_transaction_leaves_no_context_behind(
    settings: Settings,
    migrated_db: MigratedDatabase,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions, documents=1)
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    engine = build_runtime_engine(targets, settings, pool_size=1, max_overflow=0)
    sessions = make_sessionmaker(engine)

    async def fail_after_reading() -> None:
        async with tenant_transaction(sessions, tenant.tenant_id) as session:
            assert (await session.scalars(select(Document.id))).all() == tenant.document_ids
            raise _HandlerFailedError  # rolled back

    try:
        with pytest.raises(_HandlerFailedError):
            await fail_after_reading()
        # The pool's one connection again, outside any tenant transaction.
        async with sessions() as session:
            after = (await session.scalars(select(Document.id))).all()
            context = await session.scalar(
                text("SELECT current_setting('app.current_tenant_id', true)")
            )
    finally:
        await engine.dispose()
    assert after == []
    assert context in (None, "")


# Any way of writing the setting: set_config('app.current_tenant_id', ...) or SET [LOCAL] ...
_SETS_TENANT_CONTEXT = re.compile(
    r"set_config\(\s*['\"]app\.current_tenant_id|\bSET\s+(LOCAL\s+|SESSION\s+)?app\.current_tenant_id",
    re.IGNORECASE,
)


def test_tenant_context_is_set_in_one_place_only() -> None:
    app_dir = Path(__file__).resolve().parents[2] / "app"
    setters = sorted(
        str(path.relative_to(app_dir))
        for path in app_dir.rglob("*.py")
        if _SETS_TENANT_CONTEXT.search(path.read_text())
    )
    assert setters == ["database/tenant_context.py"]


async def test_tenant_context_accepts_only_a_uuid(
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    with pytest.raises(TypeError, match=r"tenant_id must be a uuid\.UUID"):
        async with tenant_transaction(runtime_sessions, "' OR true --"):  # type: ignore[arg-type]
            pass
