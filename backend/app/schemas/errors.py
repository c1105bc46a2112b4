"""The JSON error body every 4xx/5xx response carries (documented in the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    """What went wrong: a stable code, a message for people, the request id to quote."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str
    request_id: str | None = None
    reason: str | None = None


class ErrorResponse(BaseModel):
    """`{"error": {...}}`."""

    error: ErrorDetail
