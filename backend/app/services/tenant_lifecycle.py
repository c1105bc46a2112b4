"""A tenant's end of life: offboarding in two steps, and the retention purge of soft deletes.

Everything here runs as the provisioning role (`admin_transaction`), the only role allowed to
DELETE users and documents; `app_runtime` holds no DELETE anywhere. The audit log is never
touched: it is append-only, holds field names and not contents, and records each step.

Offboarding (docs/TENANT_LIFECYCLE.md):
- `schedule_offboarding`: status `offboarding` (the caller lookup admits `active` tenants only,
  so every request of the tenant is refused from this commit on) and a grace period;
- `cancel_offboarding`: back to `active` during the grace period;
- `execute_offboarding`: after the grace period, destroys the tenant's key (crypto-shredding),
  deletes its objects, hard-deletes its documents and users, and leaves the tenant row as an
  `offboarded` tombstone. Each step is idempotent and committed on its own, so a run that
  crashed halfway is simply run again; the dependencies are checked before anything is
  deleted, and a failure stops the run with the step and the dependency named.

Retention: `purge_deleted` erases documents and users soft-deleted longer ago than the
retention period, with their objects, one audit row per erased row. Concurrent runs (cron
overlapping itself, two hosts) are safe: each batch takes its rows with
`FOR UPDATE SKIP LOCKED`, so two runs never pick the same row and never wait on each other,
and a row restored meanwhile is no longer a candidate when its lock is taken.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.key_manager import KeyManager, KeyManagerError, KeyNotFoundError
from app.content.object_store import ObjectStore, ObjectStoreError
from app.core.errors import ConflictError, ServiceUnavailableError
from app.database.session import admin_transaction
from app.models import AuditLog, Document, IdempotencyKey, Tenant, User
from app.services import audit, document_content
from app.services.actor import Actor
from app.services.tenants import get_tenant

BATCH_ROWS = 500
"""Documents erased per transaction: bounds row locks held and work lost to a crash."""

OFFBOARDABLE = ("active", "suspended")
DELETE_CONCURRENCY = 16
"""Object deletions in flight at once (S3 answers each in one round trip)."""


class DependencyUnavailableError(ServiceUnavailableError):
    """Object storage or the key manager failed: the run stopped before deleting more."""

    def __init__(self, dependency: str, step: str, cause: BaseException) -> None:
        super().__init__(f"{dependency} unavailable during {step}: {cause}")
        self.dependency = dependency
        self.step = step


def document_object_keys(document: Any) -> list[str]:
    """The object-store keys that hold a document's content (none before its upload)."""
    key = document.content_object_key
    return [] if key is None else [key]


# Scheduling ------------------------------------------------------------------------------


async def schedule_offboarding(
    session: AsyncSession, actor: Actor, tenant_id: uuid.UUID, grace: timedelta
) -> Tenant:
    """Revoke the tenant's access now and start its grace period (idempotent while scheduled)."""
    actor.require_admin()
    tenant = await get_tenant(session, actor, tenant_id)
    if tenant.status == "offboarding":
        return tenant
    if tenant.status not in OFFBOARDABLE:
        raise ConflictError(f"tenant {tenant_id} is {tenant.status}: nothing to schedule")
    now = await session.scalar(select(func.now()))
    assert now is not None
    tenant.status = "offboarding"
    tenant.offboard_scheduled_at = now
    tenant.offboard_after = now + grace
    await session.flush()
    await audit.record(
        session,
        actor,
        "tenant.offboard_schedule",
        tenant,
        changed=["status", "offboard_scheduled_at", "offboard_after"],
    )
    return tenant


async def cancel_offboarding(session: AsyncSession, actor: Actor, tenant_id: uuid.UUID) -> Tenant:
    """Reactivate a tenant whose offboarding is scheduled and not executed."""
    actor.require_admin()
    tenant = await get_tenant(session, actor, tenant_id)
    if tenant.status != "offboarding":
        raise ConflictError(
            f"tenant {tenant_id} is {tenant.status}: only a scheduled offboarding can be cancelled"
        )
    if await _offboarding_started(session, tenant_id):
        raise ConflictError(
            f"tenant {tenant_id}: execution has started (its key may be destroyed, its "
            "content deleted); run `offboard-tenant --execute` again to finish it"
        )
    tenant.status = "active"
    tenant.offboard_scheduled_at = None
    tenant.offboard_after = None
    await session.flush()
    await audit.record(
        session,
        actor,
        "tenant.offboard_cancel",
        tenant,
        changed=["status", "offboard_scheduled_at", "offboard_after"],
    )
    return tenant


async def _recorded(session: AsyncSession, tenant_id: uuid.UUID, action: str) -> bool:
    """Whether the tenant's audit log already holds an `action` row (steps write theirs once)."""
    found = select(AuditLog.id).where(AuditLog.tenant_id == tenant_id, AuditLog.action == action)
    return bool(await session.scalar(select(exists(found))))


async def _offboarding_started(session: AsyncSession, tenant_id: uuid.UUID) -> bool:
    return await _recorded(session, tenant_id, "tenant.offboard_start")


# Execution -------------------------------------------------------------------------------


@dataclass
class OffboardingReport:
    """What one `execute_offboarding` run did (a re-run reports only its own work)."""

    tenant_id: uuid.UUID
    already_offboarded: bool = False
    key_destroyed: bool = False
    objects_deleted: int = 0
    documents_deleted: int = 0
    users_deleted: int = 0
    steps: list[str] = field(default_factory=list)


Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


async def _checked(dependency: str, step: str, check: Any) -> None:
    try:
        await check()
    except (ObjectStoreError, KeyManagerError) as exc:
        raise DependencyUnavailableError(dependency, step, exc) from exc


async def execute_offboarding(
    sessions: async_sessionmaker[AsyncSession],
    store: Callable[[], Any],
    keys: Callable[[], Any],
    actor: Actor,
    tenant_id: uuid.UUID,
    *,
    progress: Progress = _quiet,
    batch_rows: int = BATCH_ROWS,
) -> OffboardingReport:
    """Shred and erase a tenant whose grace period is over; the tenant row stays as a tombstone.

    `store` and `keys` open the object store and key manager (`ContentBackends.object_store`,
    `.key_manager`): they are opened only when the tenant has something to delete there.
    Safe to re-run after any failure: every step skips what an earlier run finished.
    """
    actor.require_admin()
    report = OffboardingReport(tenant_id)
    async with admin_transaction(sessions) as session:
        tenant = await get_tenant(session, actor, tenant_id)
        if tenant.status == "offboarded":
            report.already_offboarded = True
            return report
        if tenant.status != "offboarding" or tenant.offboard_after is None:
            raise ConflictError(
                f"tenant {tenant_id} is {tenant.status}: schedule its offboarding first"
            )
        now = await session.scalar(select(func.now()))
        assert now is not None
        if now < tenant.offboard_after:
            raise ConflictError(
                f"tenant {tenant_id}: the grace period runs until "
                f"{tenant.offboard_after.isoformat(timespec='seconds')}; cancel or wait"
            )
        # The tenant's key, and any other key its documents' data keys were wrapped with (a
        # key brought by the operator and replaced since): all of them are destroyed.
        content_refs = await session.scalars(
            select(Document.content_key_ref)
            .where(Document.tenant_id == tenant_id, Document.content_key_ref.is_not(None))
            .distinct()
        )
        key_refs = sorted({ref for ref in [tenant.kms_key_arn, *content_refs] if ref is not None})

    # Check both dependencies before the first irreversible step.
    # Storage is always checked: a tenant without documents may still own orphaned objects.
    key_manager: KeyManager | None = None
    object_store: ObjectStore = await _opened("object storage", "the pre-flight check", store)
    await _checked("object storage", "the pre-flight check", object_store.check)
    if key_refs:
        key_manager = await _opened("the key manager", "the pre-flight check", keys)
        await _checked("the key manager", "the pre-flight check", key_manager.check)
    progress("dependencies checked")
    async with admin_transaction(sessions) as session:
        if not await _offboarding_started(session, tenant_id):
            tenant = await get_tenant(session, actor, tenant_id)
            await audit.record(session, actor, "tenant.offboard_start", tenant)

    if key_manager is not None:
        await _destroy_keys(sessions, key_manager, key_refs, actor, tenant_id, report)
        progress("tenant key destroyed" if report.key_destroyed else "tenant key already gone")

    await _erase_documents(sessions, object_store, tenant_id, report, progress, batch_rows)
    await _sweep_prefix(object_store, tenant_id, report)
    progress(f"{report.objects_deleted} objects deleted")

    async with admin_transaction(sessions) as session:
        tenant = await get_tenant(session, actor, tenant_id)
        # Stored responses of the tenant's writes (ids, names) go with the users they belong to.
        await session.execute(delete(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id))
        result = await session.execute(delete(User).where(User.tenant_id == tenant_id))
        report.users_deleted = int(getattr(result, "rowcount", 0) or 0)
        # Rows a document insert raced in after the batches (none: access is revoked) would
        # make this fail on the foreign key rather than leave a user behind silently.
        tenant.status = "offboarded"
        tenant.offboarded_at = await session.scalar(select(func.now()))
        await session.flush()
        await audit.record(
            session,
            actor,
            "tenant.offboard",
            tenant,
            changed=["status", "offboarded_at"],
            details={
                "documents_deleted": report.documents_deleted,
                "users_deleted": report.users_deleted,
                "objects_deleted": report.objects_deleted,
            },
        )
    progress(f"{report.users_deleted} users erased; tenant is a tombstone")
    return report


async def _opened(dependency: str, step: str, opener: Callable[[], Any]) -> Any:
    try:
        return await opener()
    except (ObjectStoreError, KeyManagerError, OSError, RuntimeError) as exc:
        raise DependencyUnavailableError(dependency, step, exc) from exc


async def _destroy_keys(
    sessions: async_sessionmaker[AsyncSession],
    key_manager: KeyManager,
    key_refs: list[str],
    actor: Actor,
    tenant_id: uuid.UUID,
    report: OffboardingReport,
) -> None:
    for key_ref in key_refs:
        try:
            await key_manager.destroy(key_ref)
            report.key_destroyed = True
        except KeyNotFoundError:
            pass  # destroyed by an earlier run (or never created)
        except KeyManagerError as exc:
            raise DependencyUnavailableError("the key manager", "the key destruction", exc) from exc
    async with admin_transaction(sessions) as session:
        if not await _recorded(session, tenant_id, "tenant.key_destroy"):
            tenant = await get_tenant(session, actor, tenant_id)
            await audit.record(session, actor, "tenant.key_destroy", tenant)


async def _erase_documents(
    sessions: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    tenant_id: uuid.UUID,
    report: OffboardingReport,
    progress: Progress,
    batch_rows: int,
) -> None:
    """Objects first, then their rows, a batch per transaction: a crash leaves rows whose
    objects may be gone already, which the next run deletes again (deleting is idempotent)."""
    while True:
        async with admin_transaction(sessions) as session:
            batch = (
                await session.execute(
                    select(Document.id, Document.content_object_key)
                    .where(Document.tenant_id == tenant_id)
                    .order_by(Document.id)
                    .limit(batch_rows)
                    .with_for_update()
                )
            ).all()
            if not batch:
                return
            report.objects_deleted += await _delete_objects(store, batch, "offboarding")
            await session.execute(
                delete(Document).where(
                    Document.tenant_id == tenant_id, Document.id.in_([row.id for row in batch])
                )
            )
        report.documents_deleted += len(batch)
        progress(f"{report.documents_deleted} documents erased")


def tenant_object_prefix(tenant_id: uuid.UUID) -> str:
    """Where every object of the tenant lives in the bucket."""
    return f"{document_content.OBJECT_KEY_PREFIX}{tenant_id}/"


async def _sweep_prefix(
    store: ObjectStore, tenant_id: uuid.UUID, report: OffboardingReport
) -> None:
    """Objects no row names any more (an upload killed midway, replaced content)."""
    try:
        async for info in store.list(tenant_object_prefix(tenant_id)):
            await store.delete(info.key)
            report.objects_deleted += 1
    except ObjectStoreError as exc:
        raise DependencyUnavailableError("object storage", "the object sweep", exc) from exc


async def _delete_objects(store: ObjectStore, documents: Any, step: str) -> int:
    """Delete the documents' objects, DELETE_CONCURRENCY at a time (one round trip each)."""
    keys = [key for document in documents for key in document_object_keys(document)]
    gate = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def delete_one(key: str) -> None:
        async with gate:
            await store.delete(key)

    try:
        async with asyncio.TaskGroup() as group:
            for key in keys:
                group.create_task(delete_one(key))
    except* ObjectStoreError as failures:
        first = failures.exceptions[0]
        raise DependencyUnavailableError("object storage", step, first) from first
    return len(keys)


# Retention -------------------------------------------------------------------------------


@dataclass
class PurgeReport:
    """What one `purge_deleted` run erased, and the users it had to keep."""

    cutoff: datetime | None = None
    documents_purged: int = 0
    objects_deleted: int = 0
    users_purged: int = 0
    users_kept_with_documents: int = 0


async def purge_deleted(
    sessions: async_sessionmaker[AsyncSession],
    store: Callable[[], Any],
    actor: Actor,
    retention: timedelta,
    *,
    progress: Progress = _quiet,
    batch_rows: int = BATCH_ROWS,
) -> PurgeReport:
    """Erase documents and users soft-deleted more than `retention` ago, with their objects.

    Each batch is one transaction that locks its rows `FOR UPDATE SKIP LOCKED` (a concurrent
    run takes other rows; a restore waits, then finds nothing), deletes the objects, deletes
    the rows and writes one `document.purge` / `user.purge` audit row each. A user who still
    owns documents (active ones, or deleted ones not yet due) is kept and counted.
    """
    actor.require_admin()
    report = PurgeReport()
    async with admin_transaction(sessions) as session:
        now = await session.scalar(select(func.now()))
    assert now is not None
    report.cutoff = cutoff = now - retention
    opened: ObjectStore | None = None

    while True:
        async with admin_transaction(sessions) as session:
            due = (
                await session.scalars(
                    select(Document)
                    .where(Document.deleted_at.is_not(None), Document.deleted_at < cutoff)
                    .order_by(Document.deleted_at, Document.id)
                    .limit(batch_rows)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not due:
                break
            if opened is None:
                opened = await _opened("object storage", "the retention purge", store)
            report.objects_deleted += await _delete_objects(opened, due, "the retention purge")
            for document in due:
                await audit.record(session, actor, "document.purge", document, changed=[])
            await session.execute(
                delete(Document).where(Document.id.in_([document.id for document in due]))
            )
            report.documents_purged += len(due)
        progress(f"{report.documents_purged} documents purged")

    owns_documents = exists().where(
        Document.tenant_id == User.tenant_id, Document.user_id == User.id
    )
    while True:
        async with admin_transaction(sessions) as session:
            due_users = (
                await session.scalars(
                    select(User)
                    .where(User.deleted_at.is_not(None), User.deleted_at < cutoff, ~owns_documents)
                    .order_by(User.deleted_at, User.id)
                    .limit(batch_rows)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not due_users:
                report.users_kept_with_documents = int(
                    await session.scalar(
                        select(func.count())
                        .select_from(User)
                        .where(User.deleted_at.is_not(None), User.deleted_at < cutoff)
                    )
                    or 0
                )
                break
            for user in due_users:
                await audit.record(session, actor, "user.purge", user, changed=[])
            erased = [user.id for user in due_users]
            # Their stored write responses first: the records' foreign key names the user.
            await session.execute(delete(IdempotencyKey).where(IdempotencyKey.user_id.in_(erased)))
            await session.execute(delete(User).where(User.id.in_(erased)))
            report.users_purged += len(due_users)
        progress(f"{report.users_purged} users purged")
    return report
