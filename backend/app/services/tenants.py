"""Tenant provisioning (admin CLI, as app_admin): create, list, suspend/activate, delete/restore.

Every change writes one audit row in the tenant it concerns, in the same transaction; asking
for the state a tenant is already in changes nothing and writes nothing.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import ConflictError, NotFoundError
from app.models import SYSTEM_TENANT_ID, Tenant
from app.schemas.tenant import TenantCreate, TenantStatus
from app.services.audit import AuditActor, record_change

RESOURCE_TYPE = "tenant"


async def create_tenant(session: AsyncSession, data: TenantCreate, actor: AuditActor) -> Tenant:
    """Insert a new active tenant."""
    tenant = Tenant(name=data.name)
    session.add(tenant)
    await session.flush()
    await _record(session, actor, tenant, "tenant.create", ["name", "status"])
    return tenant


async def list_tenants(session: AsyncSession, *, include_deleted: bool = False) -> list[Tenant]:
    """Tenants oldest first (the system tenant excluded); soft-deleted ones only on request."""
    statement = select(Tenant) if include_deleted else Tenant.active_query()
    statement = statement.where(Tenant.id != uuid.UUID(SYSTEM_TENANT_ID)).order_by(
        Tenant.created_at, Tenant.id
    )
    return list((await session.scalars(statement)).all())


async def get_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> Tenant:
    """The tenant (soft-deleted included), locked for update; NotFoundError if there is none."""
    statement = select(Tenant).where(Tenant.id == tenant_id).with_for_update()
    tenant = (await session.scalars(statement)).first()
    if tenant is None or str(tenant.id) == SYSTEM_TENANT_ID:
        raise NotFoundError(f"no tenant with id {tenant_id}")
    return tenant


async def set_tenant_status(
    session: AsyncSession, tenant_id: uuid.UUID, status: TenantStatus, actor: AuditActor
) -> Tenant:
    """Suspend (its users can no longer sign in) or re-activate a tenant."""
    tenant = await get_tenant(session, tenant_id)
    if tenant.is_deleted:
        raise ConflictError(f"tenant {tenant_id} is deleted; restore it first")
    if tenant.status == status:
        return tenant
    tenant.status = status
    await session.flush()
    action = "tenant.suspend" if status == "suspended" else "tenant.activate"
    await _record(session, actor, tenant, action, ["status"])
    return tenant


async def delete_tenant(session: AsyncSession, tenant_id: uuid.UUID, actor: AuditActor) -> Tenant:
    """Soft-delete a tenant: its users can no longer sign in; its data is kept."""
    tenant = await get_tenant(session, tenant_id)
    if tenant.is_deleted:
        return tenant
    tenant.soft_delete()
    await session.flush()
    await _record(session, actor, tenant, "tenant.delete", ["deleted_at"])
    return tenant


async def restore_tenant(session: AsyncSession, tenant_id: uuid.UUID, actor: AuditActor) -> Tenant:
    """Undo a soft delete."""
    tenant = await get_tenant(session, tenant_id)
    if not tenant.is_deleted:
        return tenant
    tenant.restore()
    await session.flush()
    await _record(session, actor, tenant, "tenant.restore", ["deleted_at"])
    return tenant


async def _record(
    session: AsyncSession, actor: AuditActor, tenant: Tenant, action: str, changed: list[str]
) -> None:
    """The audit row of one change to a tenant (in the tenant's own audit trail)."""
    await record_change(
        session,
        actor,
        tenant_id=tenant.id,
        action=action,
        resource_type=RESOURCE_TYPE,
        resource_id=tenant.id,
        changed=changed,
    )
