"""OpenAPI descriptions of the error responses routes share."""

from __future__ import annotations

from typing import Any

from app.schemas.errors import ErrorResponse

AUTHENTICATED_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorResponse,
        "description": "Malformed request: a body that is not JSON, or two Authorization headers.",
    },
    401: {
        "model": ErrorResponse,
        "description": "No bearer token, or it is expired or invalid (`error.reason` says which).",
    },
    403: {
        "model": ErrorResponse,
        "description": "The token is valid, but its tenant or user is unknown or inactive.",
    },
}
