"""Writing audit rows for a request's changes, in the same transaction as the change."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditLog
from app.services.actor import Actor

USER_AGENT_MAX = 512


async def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    resource_type: str,
    resource_id: uuid.UUID | None,
    **details: Any,
) -> AuditLog:
    """Append one audit row for `actor`; `details` must never hold document contents."""
    metadata: dict[str, Any] = {k: v for k, v in details.items() if v is not None}
    if actor.request_id:
        metadata["request_id"] = actor.request_id
    return await AuditLog.create(
        session,
        tenant_id=actor.tenant_id,
        user_id=actor.user_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        ip_address=actor.client_ip,
        user_agent=actor.user_agent[:USER_AGENT_MAX] if actor.user_agent else None,
        metadata=metadata,
    )
