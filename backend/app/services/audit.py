"""Writing audit rows for changes: one helper, `record`, in the same transaction as the change."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core import metrics
from app.models import AuditLog, Tenant
from app.services.actor import Actor


async def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    resource: Any,
    *,
    changed: Iterable[str] = (),
    details: Mapping[str, int | str | bool] | None = None,
) -> AuditLog:
    """Append the audit row for `action` (`<resource_type>.<verb>`) on the row `resource`.

    The row lands in the resource's tenant's trail (a tenant's own rows in its own). Only the
    names of the changed fields are recorded, never their contents; `details` adds counts and
    flags (what an erasure removed, what an export holds), never contents either.
    """
    metadata: dict[str, Any] = {"source": actor.source}
    if actor.request_id:
        metadata["request_id"] = actor.request_id
    changed_fields = sorted(changed)
    if changed_fields:
        metadata["changed"] = changed_fields
    if details:
        metadata.update(details)
    started = time.perf_counter()
    row = await AuditLog.create(
        session,
        tenant_id=resource.id if isinstance(resource, Tenant) else resource.tenant_id,
        user_id=actor.user_id,
        action=action,
        resource_type=action.partition(".")[0],
        resource_id=resource.id,
        ip_address=actor.client_ip,
        user_agent=actor.user_agent,
        metadata=metadata,
    )
    metrics.AUDIT_INSERT.observe(time.perf_counter() - started)
    return row
