"""The tenant's audit log, read-only: thin HTTP layer over app.services.audit_logs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import CurrentContext, TenantSession
from app.api.params import CursorCodecDep, PageDep
from app.api.responses import AUTHENTICATED_ERRORS
from app.schemas import audit_log as schemas
from app.schemas.common import NO_NUL_PATTERN
from app.services import audit_logs as audit_logs_service

router = APIRouter(prefix="/audit-logs", tags=["audit log"], responses=AUTHENTICATED_ERRORS)


@router.get("", response_model=schemas.AuditLogPage, summary="Read the audit log, newest first")
async def list_audit_logs(
    session: TenantSession,
    context: CurrentContext,
    codec: CursorCodecDep,
    page: PageDep,
    action: Annotated[
        str | None, Query(max_length=100, examples=["document.create"], pattern=NO_NUL_PATTERN)
    ] = None,
    resource_type: Annotated[str | None, Query(max_length=100, pattern=NO_NUL_PATTERN)] = None,
    resource_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> schemas.AuditLogPage:
    """Every change in the tenant, with who, when, from where; there is no way to alter it."""
    query = audit_logs_service.AuditQuery(
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        user_id=user_id,
        created_after=created_after,
        created_before=created_before,
    )
    rows, next_cursor = await audit_logs_service.list_audit_logs(
        session, context, query, page, codec
    )
    return schemas.AuditLogPage(
        items=[schemas.AuditLogEntry.model_validate(row) for row in rows], next_cursor=next_cursor
    )
