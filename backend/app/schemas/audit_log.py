"""Response shapes for the audit log (read-only: there is no request shape)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field, field_validator

from app.schemas.common import ResponseModel


class AuditLogEntry(ResponseModel):
    """One audit event of the caller's tenant."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    action: str
    resource_type: str
    resource_id: uuid.UUID | None
    ip_address: str | None
    user_agent: str | None
    metadata: dict[str, object] = Field(validation_alias="metadata_")
    created_at: datetime

    @field_validator("ip_address", mode="before")
    @classmethod
    def _ip_as_text(cls, value: object) -> str | None:
        return None if value is None else str(value)


class AuditLogPage(ResponseModel):
    """One page of audit events, newest first."""

    items: list[AuditLogEntry]
    next_cursor: str | None
