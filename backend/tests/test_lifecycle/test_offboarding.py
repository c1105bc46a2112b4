"""Offboarding: schedule revokes access at once, cancel restores it, execute shreds and erases.

Against the real servers: PostgreSQL, SeaweedFS (S3) and OpenBao (transit). After execution no
row and no object of the tenant remain, a copy of its objects and wrapped keys no longer
decrypts, the audit chain verifies against an anchor taken before, and another tenant is
untouched row for row and byte for byte. A crash halfway and an unavailable dependency are
tested as they happen: the command stops, reports, and a re-run finishes the work.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content import envelope
from app.content.embedded_process import free_ports
from app.content.key_manager import EncryptionContext, KeyManagerError
from app.content.object_store import S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.errors import ConflictError
from app.database.session import admin_transaction
from app.models import AuditLog, Tenant
from app.services import audit_anchor as audit_anchor_service
from app.services import audit_integrity as audit_integrity_service
from app.services import tenant_lifecycle as lifecycle_service
from app.services.actor import Actor
from tests.conftest import MakeCaller, s3_location
from tests.test_content.test_envelope import collect, stream
from tests.test_lifecycle.conftest import SeededTenant, objects_of, rows_of, seed_tenant

OPERATOR = Actor.operator()


async def _schedule(
    admin_sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID, days: int = 0
) -> Tenant:
    async with admin_transaction(admin_sessions) as session:
        return await lifecycle_service.schedule_offboarding(
            session, OPERATOR, tenant_id, timedelta(days=days)
        )


def _opener(value: Any) -> Any:
    async def opened() -> Any:
        return value

    return opened


async def _execute(
    admin_sessions: async_sessionmaker[AsyncSession],
    store: Any,
    keys: Any,
    tenant_id: uuid.UUID,
    **options: Any,
) -> lifecycle_service.OffboardingReport:
    return await lifecycle_service.execute_offboarding(
        admin_sessions, _opener(store), _opener(keys), OPERATOR, tenant_id, **options
    )


async def _actions(
    admin_sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID
) -> list[str]:
    async with admin_transaction(admin_sessions) as session:
        rows = await session.scalars(
            select(AuditLog.action)
            .where(AuditLog.tenant_id == tenant_id)
            .order_by(AuditLog.chain_seq)
        )
        return list(rows)


async def _assert_shredded(keys: OpenBaoTransitKeyManager, seeded: SeededTenant) -> None:
    """The copies taken before execution no longer decrypt, with any key reference."""
    for document_id, (ciphertext, wrapped) in seeded.stolen.items():
        context = EncryptionContext(seeded.tenant_id, document_id)
        with pytest.raises(KeyManagerError):
            await envelope.unseal(keys, seeded.key_ref, wrapped, context, stream([ciphertext]))
    # A key re-created under the same name is new key material: the old content stays shut.
    await keys.create_tenant_key(seeded.tenant_id)
    document_id, (ciphertext, wrapped) = next(iter(seeded.stolen.items()))
    with pytest.raises(KeyManagerError):
        await envelope.unseal(
            keys,
            seeded.key_ref,
            wrapped,
            EncryptionContext(seeded.tenant_id, document_id),
            stream([ciphertext]),
        )
    await keys.destroy(seeded.key_ref)


async def test_schedule_revokes_access_at_once_and_cancel_restores_it(
    admin_sessions: async_sessionmaker[AsyncSession],
    client: httpx.AsyncClient,
    make_caller: MakeCaller,
) -> None:
    caller = await make_caller(role="admin")
    assert (await client.get("/api/v1/me", headers=caller.headers)).status_code == 200

    tenant = await _schedule(admin_sessions, caller.tenant.id, days=30)
    assert tenant.status == "offboarding"
    assert tenant.offboard_after is not None
    assert tenant.offboard_scheduled_at is not None
    assert tenant.offboard_after - tenant.offboard_scheduled_at == timedelta(days=30)
    refused = await client.get("/api/v1/me", headers=caller.headers)
    assert refused.status_code == 403
    assert (await client.get("/api/v1/documents", headers=caller.headers)).status_code == 403

    # Scheduling again changes nothing; the grace period is not over: execute refuses.
    await _schedule(admin_sessions, caller.tenant.id, days=0)
    with pytest.raises(ConflictError, match="grace period runs until"):
        await _execute(admin_sessions, None, None, caller.tenant.id)
    # activate-tenant cannot be used to slip out of an offboarding.
    from app.services import tenants as tenants_service

    async with admin_transaction(admin_sessions) as session:
        with pytest.raises(ConflictError, match="offboard-tenant --cancel"):
            await tenants_service.set_tenant_status(session, OPERATOR, caller.tenant.id, "active")

    async with admin_transaction(admin_sessions) as session:
        tenant = await lifecycle_service.cancel_offboarding(session, OPERATOR, caller.tenant.id)
    assert (tenant.status, tenant.offboard_after) == ("active", None)
    assert (await client.get("/api/v1/me", headers=caller.headers)).status_code == 200
    actions = await _actions(admin_sessions, caller.tenant.id)
    assert actions[-2:] == ["tenant.offboard_schedule", "tenant.offboard_cancel"]
    assert actions.count("tenant.offboard_schedule") == 1  # the repeated schedule wrote nothing


async def test_execute_erases_rows_and_objects_shreds_copies_and_spares_other_tenants(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
    anchor_key: Any,
) -> None:
    leaving = await seed_tenant(admin_sessions, runtime_sessions, object_store, key_manager)
    staying = await seed_tenant(admin_sessions, runtime_sessions, object_store, key_manager)
    staying_rows = await rows_of(admin_sessions, staying.tenant_id)
    staying_objects = await objects_of(object_store, staying.object_keys)
    async with admin_transaction(admin_sessions) as session:
        verification = await audit_integrity_service.verify_chain(session)
    before = audit_anchor_service.sign_anchor(
        audit_anchor_service.anchor_from_verification(verification), anchor_key
    )

    # An object no row names (an upload killed midway): swept with the tenant's prefix.
    orphan = f"tenants/{leaving.tenant_id}/documents/{uuid.uuid4()}/orphan"
    await object_store.put_stream(orphan, stream([b"ciphertext"]), content_type="x/y")

    await _schedule(admin_sessions, leaving.tenant_id)
    report = await _execute(admin_sessions, object_store, key_manager, leaving.tenant_id)

    assert (report.key_destroyed, report.documents_deleted, report.users_deleted) == (True, 3, 2)
    assert report.objects_deleted == 4
    rows = await rows_of(admin_sessions, leaving.tenant_id)
    assert rows["users"] == []
    assert rows["documents"] == []
    (tombstone,) = rows["tenants"]
    assert tombstone["status"] == "offboarded"
    assert tombstone["offboarded_at"] is not None
    assert await objects_of(object_store, leaving.object_keys) == dict.fromkeys(leaving.object_keys)
    assert [o async for o in object_store.list(f"tenants/{leaving.tenant_id}/")] == []
    await _assert_shredded(key_manager, leaving)

    # The audit log stays, records the offboarding, and verifies against the earlier anchor.
    async with admin_transaction(admin_sessions) as session:
        after = await audit_integrity_service.verify_chain(session, anchor=before.anchor)
    assert after.ok, after.first_break
    actions = await _actions(admin_sessions, leaving.tenant_id)
    assert actions[-4:] == [
        "tenant.offboard_schedule",
        "tenant.offboard_start",
        "tenant.key_destroy",
        "tenant.offboard",
    ]
    async with admin_transaction(admin_sessions) as session:
        last = await session.scalar(
            select(AuditLog)
            .where(AuditLog.tenant_id == leaving.tenant_id)
            .order_by(AuditLog.chain_seq.desc())
            .limit(1)
        )
    assert last is not None
    assert last.metadata_["documents_deleted"] == 3
    assert last.metadata_["users_deleted"] == 2

    # The other tenant: row for row, byte for byte, and its content still opens.
    assert await rows_of(admin_sessions, staying.tenant_id) == staying_rows
    assert await objects_of(object_store, staying.object_keys) == staying_objects
    document_id, (ciphertext, wrapped) = next(iter(staying.stolen.items()))
    opened = await envelope.unseal(
        key_manager,
        staying.key_ref,
        wrapped,
        EncryptionContext(staying.tenant_id, document_id),
        stream([ciphertext]),
    )
    assert await collect(opened) == staying.plaintexts[document_id]

    # Idempotent: running it again finds a tombstone and does nothing.
    again = await _execute(admin_sessions, object_store, key_manager, leaving.tenant_id)
    assert again.already_offboarded
    assert await _actions(admin_sessions, leaving.tenant_id) == actions
    async with admin_transaction(admin_sessions) as session:
        with pytest.raises(ConflictError):
            await lifecycle_service.cancel_offboarding(session, OPERATOR, leaving.tenant_id)


class CrashError(Exception):
    """Stands for the process dying at that point."""


def _crash_at(message_start: str) -> Any:
    def progress(message: str) -> None:
        if message.startswith(message_start):
            raise CrashError(message)

    return progress


@pytest.mark.parametrize("crash_at", ["tenant key destroyed", "2 documents erased"])
async def test_a_crash_halfway_is_finished_by_running_again(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
    crash_at: str,
) -> None:
    seeded = await seed_tenant(
        admin_sessions, runtime_sessions, object_store, key_manager, documents=5
    )
    await _schedule(admin_sessions, seeded.tenant_id)
    with pytest.raises(CrashError):
        await _execute(
            admin_sessions,
            object_store,
            key_manager,
            seeded.tenant_id,
            progress=_crash_at(crash_at),
            batch_rows=2,
        )
    halfway = await rows_of(admin_sessions, seeded.tenant_id)
    assert halfway["tenants"][0]["status"] == "offboarding"  # not a tombstone yet
    assert len(halfway["users"]) == 2
    # Access stays revoked, and the half-done offboarding cannot be cancelled.
    async with admin_transaction(admin_sessions) as session:
        with pytest.raises(ConflictError, match="execution has started"):
            await lifecycle_service.cancel_offboarding(session, OPERATOR, seeded.tenant_id)

    report = await _execute(admin_sessions, object_store, key_manager, seeded.tenant_id)
    assert not report.key_destroyed  # the first run did it
    assert report.documents_deleted == len(halfway["documents"])
    rows = await rows_of(admin_sessions, seeded.tenant_id)
    assert (rows["users"], rows["documents"]) == ([], [])
    assert rows["tenants"][0]["status"] == "offboarded"
    assert set((await objects_of(object_store, seeded.object_keys)).values()) == {None}
    await _assert_shredded(key_manager, seeded)
    actions = await _actions(admin_sessions, seeded.tenant_id)
    assert actions.count("tenant.offboard_start") == 1
    assert actions.count("tenant.key_destroy") == 1
    assert actions.count("tenant.offboard") == 1


async def test_storage_or_kms_unavailable_stops_before_deleting_anything(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
    embedded_s3: Any,
) -> None:
    seeded = await seed_tenant(admin_sessions, runtime_sessions, object_store, key_manager)
    await _schedule(admin_sessions, seeded.tenant_id)
    rows_before = await rows_of(admin_sessions, seeded.tenant_id)
    objects_before = await objects_of(object_store, seeded.object_keys)
    (closed_port,) = free_ports(1)
    dead_store = await S3ObjectStore.open(
        s3_location(embedded_s3, endpoint_url=f"http://127.0.0.1:{closed_port}", max_attempts=1)
    )
    dead_keys = OpenBaoTransitKeyManager(f"http://127.0.0.1:{closed_port}", "no-token")
    try:
        for store, keys, named in (
            (dead_store, key_manager, "object storage"),
            (object_store, dead_keys, "the key manager"),
        ):
            with pytest.raises(lifecycle_service.DependencyUnavailableError) as stopped:
                await _execute(admin_sessions, store, keys, seeded.tenant_id)
            assert stopped.value.dependency == named
            assert stopped.value.status_code == 503
            assert await rows_of(admin_sessions, seeded.tenant_id) == rows_before
            assert await objects_of(object_store, seeded.object_keys) == objects_before
    finally:
        await dead_store.close()
        await dead_keys.close()
    # Nothing was shredded: the content still opens; then a run with both up finishes.
    document_id, (ciphertext, wrapped) = next(iter(seeded.stolen.items()))
    opened = await envelope.unseal(
        key_manager,
        seeded.key_ref,
        wrapped,
        EncryptionContext(seeded.tenant_id, document_id),
        stream([ciphertext]),
    )
    assert await collect(opened) == seeded.plaintexts[document_id]
    report = await _execute(admin_sessions, object_store, key_manager, seeded.tenant_id)
    assert report.documents_deleted == 3
    assert report.key_destroyed


async def test_only_a_scheduled_tenant_whose_grace_is_over_can_be_executed(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    seeded = await seed_tenant(
        admin_sessions, runtime_sessions, object_store, key_manager, documents=1
    )
    with pytest.raises(ConflictError, match="schedule its offboarding first"):
        await _execute(admin_sessions, object_store, key_manager, seeded.tenant_id)
    await _schedule(admin_sessions, seeded.tenant_id, days=1)
    with pytest.raises(ConflictError, match="grace period"):
        await _execute(admin_sessions, object_store, key_manager, seeded.tenant_id)
    async with admin_transaction(admin_sessions) as session:
        await session.execute(
            update(Tenant)
            .where(Tenant.id == seeded.tenant_id)
            .values(offboard_after=Tenant.offboard_after - timedelta(days=1, seconds=1))
        )
    report = await _execute(admin_sessions, object_store, key_manager, seeded.tenant_id)
    assert report.documents_deleted == 1
