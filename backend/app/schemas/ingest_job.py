"""Ingestion jobs as a tenant's admins see them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from app.schemas.common import ResponseModel

JobStatus = Literal["todo", "doing", "succeeded", "failed", "cancelled", "aborted"]


class IngestJob(ResponseModel):
    """One job: which document, where it stands, how often it ran, its last event."""

    id: int
    document_id: uuid.UUID
    status: JobStatus
    attempts: int
    scheduled_at: datetime | None
    last_event: str | None
    last_event_at: datetime | None


class IngestJobList(ResponseModel):
    """Newest first. A `failed` job used up its attempts; its document says why."""

    items: list[IngestJob]
