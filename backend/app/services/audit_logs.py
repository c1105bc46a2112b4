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
    """One page of the audit events `actor` may read, newest first.

    Admins read the tenant's whole log; a member reads only the rows of their own actions
    (HIPAA minimum necessary: other users' IP addresses, user agents and activity are not
    needed for a member's work; docs/SECURITY.md).
    """
    statement = AUDIT_LOGS.statement(actor)
    if not actor.is_admin:
        statement = statement.where(AuditLog.user_id == actor.user_id)
    statement = AUDIT_LOGS.filtered(
        statement,
        {
            AuditLog.action: query.action,
            AuditLog.resource_type: query.resource_type,
            AuditLog.resource_id: query.resource_id,
            AuditLog.user_id: query.user_id,
        },
        created_after=query.created_after,
        created_before=query.created_before,
    )
    # A cursor continues the same view: an admin's cursor does not page a member's view.
    fingerprint = f"{query.fingerprint()}:{'all' if actor.is_admin else actor.user_id}"
    return await AUDIT_LOGS.page(session, actor, statement, page, codec, fingerprint)
