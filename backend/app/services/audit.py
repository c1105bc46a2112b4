"""Writing audit rows for changes: who acted (a request's user, or the admin CLI) and on what."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.context import RequestContext
from app.models import AuditLog


@dataclass(frozen=True)
class AuditActor:
    """Who made a change: a user in a request, or an operator at the admin CLI (no user)."""

    source: str
    user_id: uuid.UUID | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None

    @classmethod
    def from_request(cls, context: RequestContext) -> AuditActor:
        """The authenticated caller of a request."""
        return cls(
            source="api",
            user_id=context.user_id,
            client_ip=_ip_or_none(context.client_ip),
            user_agent=context.user_agent,
            request_id=context.request_id,
        )


ADMIN_CLI = AuditActor(source="admin-cli")


def _ip_or_none(host: str | None) -> str | None:
    """The client address if it is an IP (the column is INET); ASGI servers may give a name."""
    if host is None:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


async def record_change(
    session: AsyncSession,
    actor: AuditActor,
    *,
    tenant_id: uuid.UUID,
    action: str,
    resource_type: str,
    resource_id: uuid.UUID,
    changed: Iterable[str] = (),
) -> AuditLog:
    """Append the audit row for one change, in the same transaction as the change."""
    metadata: dict[str, Any] = {"source": actor.source}
    if actor.request_id:
        metadata["request_id"] = actor.request_id
    changed_fields = sorted(changed)
    if changed_fields:
        metadata["changed"] = changed_fields
    return await AuditLog.create(
        session,
        tenant_id=tenant_id,
        user_id=actor.user_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        ip_address=actor.client_ip,
        user_agent=actor.user_agent,
        metadata=metadata,
    )
