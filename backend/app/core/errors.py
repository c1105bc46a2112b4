"""Domain errors: what went wrong, in words safe to show a client, and the HTTP status it means.

Raised by services, the auth layer and the middlewares alike (the admin CLI raises them too,
without loading FastAPI); rendered as JSON at the edge (`app.api.errors`).
"""

from __future__ import annotations

from typing import Any

# The fixed texts a client may see for database failures: never the driver's own message.
INTERNAL_ERROR_MESSAGE = "internal error"
DATABASE_UNAVAILABLE_MESSAGE = "the database is unavailable"
STORAGE_UNAVAILABLE_MESSAGE = (
    "object storage is unavailable (nothing was stored or changed); retry shortly"
)
KMS_UNAVAILABLE_MESSAGE = (
    "the key management service (KMS) is unavailable (nothing was stored or changed); retry shortly"
)
CONTENT_INTEGRITY_MESSAGE = (
    "the stored content failed its integrity check (it is not this document's content as"
    " uploaded); no bytes were sent"
)
DATABASE_TIMEOUT_MESSAGE = (
    "the request's database work ran past the time limit and was cancelled"
    " (nothing was saved); retry shortly or narrow the request"
)


class AppError(Exception):
    """An error with a status code and a message safe to show the client."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers
        self.extra: dict[str, Any] = {}


class InvalidInputError(AppError):
    """Input that passed schema validation but is still wrong (e.g. a forged cursor)."""

    status_code = 422
    code = "validation_error"


class NotFoundError(AppError):
    """The resource does not exist for this caller (another tenant's looks the same)."""

    status_code = 404
    code = "not_found"


class ConflictError(AppError):
    """The request conflicts with existing state (e.g. a duplicate active email)."""

    status_code = 409
    code = "conflict"


class IdempotencyKeyInFlightError(ConflictError):
    """A request with the same Idempotency-Key is still running; retry once it has finished."""

    code = "idempotency_key_in_flight"


class IdempotencyKeyReusedError(AppError):
    """The Idempotency-Key was already used for a different request (IETF httpapi draft: 422)."""

    status_code = 422
    code = "idempotency_key_reused"


class ForbiddenError(AppError):
    """Authenticated, but not allowed to do this."""

    status_code = 403
    code = "forbidden"


class UnauthorizedError(AppError):
    """No valid credentials; `reason` is one of missing, expired, invalid (also in the body)."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, reason: str) -> None:
        # RFC 6750 §3: no error code when credentials are missing, invalid_token otherwise.
        challenge = "Bearer"
        if reason != "missing":
            challenge += ' error="invalid_token"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})
        self.reason = reason
        self.extra = {"reason": reason}


class HeaderTooLargeError(AppError):
    """A request header is larger than we accept (checked before the header is parsed)."""

    status_code = 431
    code = "header_too_large"


class PayloadTooLargeError(AppError):
    """The request body is larger than MAX_REQUEST_BODY_BYTES (checked before it is read whole)."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(AppError):
    """The request body is not JSON in UTF-8."""

    status_code = 415
    code = "unsupported_media_type"


class TooManyRequestsError(AppError):
    """The caller's tenant is over its request rate or concurrency limit; retry after a while."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_seconds)})
        self.extra = {"retry_after_seconds": retry_after_seconds}


class ServiceUnavailableError(AppError):
    """A dependency (the database) is unavailable; the client may retry."""

    status_code = 503
    code = "service_unavailable"
