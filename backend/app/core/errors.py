"""Domain errors and the JSON error body every 4xx/5xx response carries."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

if TYPE_CHECKING:
    # Imported lazily below: the admin CLI raises these errors without loading FastAPI.
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)


# The fixed texts a client may see for database failures: never the driver's own message.
INTERNAL_ERROR_MESSAGE = "internal error"
DATABASE_UNAVAILABLE_MESSAGE = "the database is unavailable"
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


def error_body(
    status_code: int, code: str, message: str, request: Request, **extra: Any
) -> dict[str, Any]:
    """The one JSON shape for errors: {"error": {code, message, request_id, ...}}."""
    body: dict[str, Any] = {"code": code, "message": message}
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return {"error": body}


async def send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    error: tuple[int, str, str],
    headers: dict[str, str] | None = None,
) -> None:
    """Answer from a pure ASGI middleware with the same JSON error shape as the handlers."""
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import JSONResponse

    status_code, code, message = error
    body = error_body(status_code, code, message, StarletteRequest(scope))
    response = JSONResponse(body, status_code=status_code, headers=headers)
    await response(scope, receive, send)


# A statement ran past statement_timeout (57014 query_canceled) or waited past lock_timeout
# (55P03 lock_not_available): the transaction is rolled back and the caller may retry.
_TIMEOUT_SQLSTATES = {"57014", "55P03"}


def _printable(value: object) -> str:
    """Text safe to put in a UTF-8 response: a lone surrogate (e.g. a JSON key) is escaped."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _describe_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = []
    for problem in exc.errors():
        if problem.get("type") == "json_invalid":
            # FastAPI's location is ("body", <character offset>): say so, not "1".
            offset = problem.get("loc", ("body", "?"))[-1]
            error = problem.get("ctx", {}).get("error", "invalid JSON")
            details.append({"field": "body", "message": f"not valid JSON at {offset}: {error}"})
            continue
        location = [_printable(part) for part in problem.get("loc", ()) if part != "body"]
        # Pydantic prefixes our validators' messages with "Value error, ": noise to a client.
        message = _printable(problem.get("msg", "")).removeprefix("Value error, ")
        details.append({"field": ".".join(location) or "body", "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return f"invalid request: {summary}", details


def install_error_handlers(app: FastAPI) -> None:
    """Make every error a JSON body of the same shape; never a stack trace to the client."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from app.middleware.no_store import PHI_RESPONSE_HEADERS

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, exc.code, exc.message, request, **exc.extra),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _describe_validation(exc)
        return JSONResponse(
            error_body(422, "validation_error", message, request, details=details),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(exc.status_code, code, str(exc.detail), request),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(PoolTimeoutError)
    async def _pool_timeout(request: Request, exc: PoolTimeoutError) -> JSONResponse:
        logger.warning("database pool exhausted", extra={"error": type(exc).__name__})
        return JSONResponse(
            error_body(503, "service_unavailable", "the service is busy, retry shortly", request),
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # The driver's text can carry SQL, constraint names and other tenants' values: log it,
        # never send it.
        sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
        logger.error(
            "database error", extra={"sqlstate": sqlstate, "error": type(exc.orig).__name__}
        )
        if sqlstate in _TIMEOUT_SQLSTATES:
            return JSONResponse(
                error_body(
                    503,
                    "database_timeout",
                    DATABASE_TIMEOUT_MESSAGE,
                    request,
                ),
                status_code=503,
                headers={"Retry-After": "1"},
            )
        if isinstance(exc, OperationalError | InterfaceError) or (sqlstate or "").startswith(
            ("08", "57")
        ):
            return JSONResponse(
                error_body(503, "service_unavailable", DATABASE_UNAVAILABLE_MESSAGE, request),
                status_code=503,
                headers={"Retry-After": "2"},
            )
        return JSONResponse(
            error_body(500, "internal_error", INTERNAL_ERROR_MESSAGE, request), status_code=500
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        # Starlette answers unhandled errors from its outermost middleware, outside the ones that
        # add X-Request-ID and the PHI headers to every response, so they are added here.
        request_id = getattr(request.state, "request_id", None)
        headers = dict(PHI_RESPONSE_HEADERS)
        if request_id:
            headers["X-Request-ID"] = request_id
        return JSONResponse(
            error_body(500, "internal_error", INTERNAL_ERROR_MESSAGE, request),
            status_code=500,
            headers=headers,
        )
