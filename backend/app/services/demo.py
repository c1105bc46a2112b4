"""The demo tenant and admin user `make run` ensures exist in dev mode."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.content.key_manager import KeyManager
from app.models import Tenant, User
from app.schemas.tenant import TenantCreate
from app.schemas.user import UserCreate
from app.services import tenants as tenants_service
from app.services import users as users_service
from app.services.actor import Actor

DEMO_TENANT_NAME = "Demo tenant"
DEMO_EMAIL = "demo-admin@example.com"
DEMO_SUBJECT = "dev|demo-admin"


async def ensure_demo_user(
    session: AsyncSession, actor: Actor, keys: KeyManager
) -> tuple[Tenant, User]:
    """The active demo admin and their active tenant with its key, created (with audit rows)
    if missing."""
    statement = (
        select(User, Tenant)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(
            User.external_idp_id == DEMO_SUBJECT,
            User.deleted_at.is_(None),
            Tenant.deleted_at.is_(None),
            Tenant.status == "active",
        )
        .order_by(User.created_at)
        .limit(1)
    )
    row = (await session.execute(statement)).first()
    if row is not None:
        user, tenant = row
        # A demo tenant made before tenants had keys gets one now.
        tenant = await tenants_service.provision_tenant_key(session, actor, tenant.id, keys)
        return tenant, user
    tenant = await tenants_service.create_tenant(
        session, actor, TenantCreate(name=DEMO_TENANT_NAME), keys
    )
    user = await users_service.create_user(
        session,
        actor.in_tenant(tenant.id),
        UserCreate(
            email=DEMO_EMAIL, external_idp_id=DEMO_SUBJECT, full_name="Demo Admin", role="admin"
        ),
    )
    return tenant, user
