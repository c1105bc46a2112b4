"""The tenant's audit log, read-only: thin HTTP layer over app.services.audit_logs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminTenant, Tenant, read_only
from app.api.idempotency import IdempotentRoute
from app.api.params import CursorCodecDep, PageDep
from app.api.responses import API_ERRORS
from app.schemas import audit_log as schemas
from app.schemas.audit_integrity import AuditChainVerification
from app.schemas.common import Text, page_of
from app.services import audit_integrity as audit_integrity_service
from app.services import audit_logs as audit_logs_service

router = APIRouter(
    route_class=IdempotentRoute, prefix="/audit-logs", tags=["audit log"], responses=API_ERRORS
)


@router.get(
    "/verify",
    response_model=AuditChainVerification,
    summary="Verify the tenant's audit hash chain (admins)",
)
@read_only()
async def verify_audit_logs(tenant: AdminTenant) -> AuditChainVerification:
    """Recompute the tenant's chain: `ok` with the count and head hash, or the first broken link.

    Runs under RLS, so it sees only the caller's tenant; `verify-audit` (admin CLI) checks every
    tenant and the chain heads too. 200 either way: a broken chain is a finding, not an error.
    """
    return await audit_integrity_service.verify_chain(
        tenant.session, tenant_id=tenant.actor.own_tenant()
    )


@router.get(
    "",
    response_model=schemas.AuditLogPage,
    summary="Read the audit log, newest first (members: their own actions only)",
)
@read_only()
async def list_audit_logs(
    tenant: Tenant,
    codec: CursorCodecDep,
    page: PageDep,
    action: Annotated[Text | None, Query(max_length=100, examples=["document.create"])] = None,
    resource_type: Annotated[Text | None, Query(max_length=100, examples=["document"])] = None,
    resource_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> schemas.AuditLogPage:
    """Every change in the tenant, with who, when, from where; there is no way to alter it.

    Admins read every row; members read only the rows of their own actions (minimum
    necessary: another user's IP address and user agent are not a member's business).
    """
    query = audit_logs_service.AuditQuery(
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        user_id=user_id,
        created_after=created_after,
        created_before=created_before,
    )
    rows, next_cursor = await audit_logs_service.list_audit_logs(
        tenant.session, tenant.actor, query, page, codec
    )
    return page_of(schemas.AuditLogPage, rows, next_cursor)
