"""GET /api/v1/audit-logs/verify: recompute the audit hash chain (admin only).

The handler is thin: the session comes from the request dependency that owns the transaction
(a tenant-scoped runtime session shows that tenant's chain only, through RLS; an admin
transaction shows every tenant and the chain heads). It is wired into the audit-logs router
together with the admin-only dependency; it must never be mounted without it.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.schemas.audit_integrity import AuditChainVerification
from app.services import audit_integrity as audit_integrity_service


async def verify_audit_logs(
    session: AsyncSession, tenant_id: uuid.UUID | None = None
) -> AuditChainVerification:
    """200 with `ok` and each tenant's count and head, or the first broken link of each."""
    return await audit_integrity_service.verify_chain(session, tenant_id=tenant_id)
