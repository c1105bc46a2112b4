"""Reading the caller's tenant's audit log (there is no way to change it)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.context import RequestContext
from app.models import AuditLog
from app.services.pagination import CursorCodec, PageRequest, fetch_page, query_fingerprint


@dataclass(frozen=True)
class AuditQuery:
    """Filters for reading the audit log."""

    action: str | None = None
    resource_type: str | None = None
    resource_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def fingerprint(self) -> str:
        """Digest binding a cursor to these filters."""
        return query_fingerprint(self.__dict__)


async def list_audit_logs(
    session: AsyncSession,
    actor: RequestContext,
    query: AuditQuery,
    page: PageRequest,
    codec: CursorCodec,
) -> tuple[list[AuditLog], str | None]:
    """One page of the audit events `actor` may read, newest first.

    Admins read the tenant's whole log; a member reads only the rows of their own actions
    (HIPAA minimum necessary: other users' IP addresses, user agents and activity are not
    needed for a member's work; docs/SECURITY.md).
    """
    statement = select(AuditLog).where(AuditLog.tenant_id == actor.tenant_id)
    if not actor.is_admin:
        statement = statement.where(AuditLog.user_id == actor.user_id)
    if query.action is not None:
        statement = statement.where(AuditLog.action == query.action)
    if query.resource_type is not None:
        statement = statement.where(AuditLog.resource_type == query.resource_type)
    if query.resource_id is not None:
        statement = statement.where(AuditLog.resource_id == query.resource_id)
    if query.user_id is not None:
        statement = statement.where(AuditLog.user_id == query.user_id)
    if query.created_after is not None:
        statement = statement.where(AuditLog.created_at >= query.created_after)
    if query.created_before is not None:
        statement = statement.where(AuditLog.created_at < query.created_before)
    # A cursor continues the same view: an admin's cursor does not page a member's view.
    fingerprint = f"{query.fingerprint()}:{'all' if actor.is_admin else actor.user_id}"
    return await fetch_page(session, statement, AuditLog, page, codec, actor.tenant_id, fingerprint)
