"""Reading the caller's tenant's audit log (there is no way to change it)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditLog
from app.services.actor import Actor
from app.services.kit import ListFilters, TenantScoped
from app.services.pagination import CursorCodec, PageRequest

AUDIT_LOGS = TenantScoped(AuditLog, "audit log entry")


@dataclass(frozen=True)
class AuditQuery(ListFilters):
    """Filters for reading the audit log."""

    action: str | None = None
    resource_type: str | None = None
    resource_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


async def list_audit_logs(
    session: AsyncSession,
    actor: Actor,
    query: AuditQuery,
    page: PageRequest,
    codec: CursorCodec,
) -> tuple[list[AuditLog], str | None]:
    """One page of the tenant's audit events, newest first."""
    statement = AUDIT_LOGS.filtered(
        AUDIT_LOGS.statement(actor),
        {
            AuditLog.action: query.action,
            AuditLog.resource_type: query.resource_type,
            AuditLog.resource_id: query.resource_id,
            AuditLog.user_id: query.user_id,
        },
        created_after=query.created_after,
        created_before=query.created_before,
    )
    return await AUDIT_LOGS.page(session, actor, statement, page, codec, query.fingerprint())
