"""Tenant provisioning (admin CLI, as app_admin): create, list, suspend/activate, delete/restore,
and each tenant's own key in the key manager (docs/ENCRYPTION.md).

Every change writes one audit row in the tenant it concerns, in the same transaction; asking
for the state a tenant is already in changes nothing and writes nothing.
"""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from app.content.key_manager import (
    KeyManager,
    KeyManagerError,
    KeyManagerUnavailableError,
    verify_tenant_key,
)
from app.core.errors import ConflictError, InvalidInputError, NotFoundError
from app.models import SYSTEM_TENANT_ID, Tenant
from app.schemas.tenant import TenantCreate
from app.services import audit
from app.services.actor import Actor
from app.services.kit import TenantScoped, restore, soft_delete

# A tenant is its own tenant: the scoping column is its id.
TENANTS = TenantScoped(Tenant, "tenant", tenant_column=Tenant.id)
_SYSTEM_TENANT = uuid.UUID(SYSTEM_TENANT_ID)
# The statuses suspend/activate set; offboarding has commands of its own (tenant_lifecycle).
SettableStatus = Literal["active", "suspended"]


async def create_tenant(
    session: AsyncSession, actor: Actor, data: TenantCreate, keys: KeyManager | None
) -> Tenant:
    """Insert a new active tenant with its own key (a new one, or `data.kms_key_ref` verified).

    The key is made before the transaction commits: if the key manager fails, no tenant exists.
    `keys=None` creates the tenant without a key (no KMS configured yet): its content uploads
    are refused (409) until `provision_tenant_key` gives it one.
    """
    actor.require_admin()
    tenant = Tenant(name=data.name)
    session.add(tenant)
    await session.flush()
    if keys is not None:
        tenant.kms_key_arn = await _provision_key(keys, tenant.id, data.kms_key_ref)
        await session.flush()
    changed = ["name", "status", "kms_key_arn"] if keys is not None else ["name", "status"]
    await audit.record(session, actor, "tenant.create", tenant, changed=changed)
    return tenant


async def provision_tenant_key(
    session: AsyncSession,
    actor: Actor,
    tenant_id: uuid.UUID,
    keys: KeyManager,
    key_ref: str | None = None,
) -> Tenant:
    """Give a tenant that has none its own key (a new one, or `key_ref` verified).

    A tenant that has a key keeps it (asking again changes nothing): replacing it would leave
    its content's data keys wrapped under a key no longer recorded; `rotate-tenant-key` is the
    way to new key material.
    """
    actor.require_admin()
    tenant = await get_tenant(session, actor, tenant_id)
    if tenant.kms_key_arn is not None:
        if key_ref is not None and key_ref != tenant.kms_key_arn:
            raise ConflictError(
                f"tenant {tenant_id} already has the key {tenant.kms_key_arn};"
                " use rotate-tenant-key for new key material"
            )
        return tenant
    tenant.kms_key_arn = await _provision_key(keys, tenant.id, key_ref)
    await session.flush()
    await audit.record(session, actor, "tenant.provision_key", tenant, changed=["kms_key_arn"])
    return tenant


async def _provision_key(keys: KeyManager, tenant_id: uuid.UUID, key_ref: str | None) -> str:
    """A new key for the tenant, or the operator's `key_ref` once it proved usable."""
    if key_ref is None:
        return await keys.create_tenant_key(tenant_id)
    try:
        await verify_tenant_key(keys, key_ref, tenant_id)
    except KeyManagerUnavailableError:
        raise  # a 503 / "unavailable", not the operator's mistake
    except KeyManagerError as exc:
        raise InvalidInputError(f"the key {key_ref} is not usable by this app: {exc}") from exc
    return key_ref


async def list_tenants(
    session: AsyncSession, actor: Actor, *, include_deleted: bool = False
) -> list[Tenant]:
    """Tenants oldest first (the system tenant excluded); soft-deleted ones only on request."""
    statement = TENANTS.visible(actor, include_deleted=include_deleted)
    statement = statement.where(Tenant.id != _SYSTEM_TENANT).order_by(Tenant.created_at, Tenant.id)
    return list((await session.scalars(statement)).all())


async def get_tenant(session: AsyncSession, actor: Actor, tenant_id: uuid.UUID) -> Tenant:
    """The tenant (soft-deleted included), locked for update; NotFoundError if there is none."""
    if tenant_id == _SYSTEM_TENANT:
        raise NotFoundError(f"no tenant with id {tenant_id}")
    return await TENANTS.get_or_404(
        session, actor, tenant_id, include_deleted=True, for_update=True
    )


async def set_tenant_status(
    session: AsyncSession, actor: Actor, tenant_id: uuid.UUID, status: SettableStatus
) -> Tenant:
    """Suspend (its users can no longer sign in) or re-activate a tenant."""
    actor.require_admin()
    tenant = await get_tenant(session, actor, tenant_id)
    if tenant.is_deleted:
        raise ConflictError(f"tenant {tenant_id} is deleted; restore it first")
    if tenant.status in ("offboarding", "offboarded"):
        raise ConflictError(
            f"tenant {tenant_id} is {tenant.status}: only `offboard-tenant --cancel` reactivates"
            " a tenant during its grace period"
        )
    if tenant.status == status:
        return tenant
    tenant.status = status
    await session.flush()
    action = "tenant.suspend" if status == "suspended" else "tenant.activate"
    await audit.record(session, actor, action, tenant, changed=["status"])
    return tenant


async def delete_tenant(session: AsyncSession, actor: Actor, tenant_id: uuid.UUID) -> Tenant:
    """Soft-delete a tenant: its users can no longer sign in; its data is kept."""
    actor.require_admin()
    tenant = await get_tenant(session, actor, tenant_id)
    await soft_delete(session, actor, tenant, "tenant.delete")
    return tenant


async def restore_tenant(session: AsyncSession, actor: Actor, tenant_id: uuid.UUID) -> Tenant:
    """Undo a soft delete."""
    actor.require_admin()
    tenant = await get_tenant(session, actor, tenant_id)
    await restore(session, actor, tenant, "tenant.restore")
    return tenant
