"""Small factory functions for test data. Call them inside an admin or tenant transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Document, Tenant, User


async def make_tenant(session: AsyncSession, name: str | None = None, **fields: Any) -> Tenant:
    """Insert a tenant (needs the provisioning role: the runtime role can't create tenants)."""
    tenant = Tenant(name=name or f"tenant-{uuid.uuid4().hex[:8]}", **fields)
    session.add(tenant)
    await session.flush()
    return tenant


async def make_user(
    session: AsyncSession, tenant: Tenant | uuid.UUID, email: str | None = None, **fields: Any
) -> User:
    """Insert a user of `tenant`."""
    tenant_id = tenant.id if isinstance(tenant, Tenant) else tenant
    user = User(
        tenant_id=tenant_id,
        email=email or f"user-{uuid.uuid4().hex[:8]}@example.org",
        external_idp_id=fields.pop("external_idp_id", f"sub-{uuid.uuid4().hex}"),
        **fields,
    )
    session.add(user)
    await session.flush()
    return user


async def make_document(session: AsyncSession, user: User, **fields: Any) -> Document:
    """Insert a document uploaded by `user` (in the user's tenant)."""
    values: dict[str, Any] = {
        "s3_bucket": "test-bucket",
        "s3_key": f"docs/{uuid.uuid4().hex}.pdf",
        "filename": "report.pdf",
        "content_type": "application/pdf",
        "size_bytes": 1024,
    }
    values.update(fields)
    document = Document(tenant_id=user.tenant_id, user_id=user.id, **values)
    session.add(document)
    await session.flush()
    return document
