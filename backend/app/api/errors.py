"""The HTTP edge of errors: the one JSON error body, the app's handlers, database errors mapped.

Every 4xx/5xx answer has the shape {"error": {code, message, request_id, ...}}: domain errors
(`app.core.errors.AppError`) with their own status, request validation as 422, database
failures as a generic 500 or a 503 naming the database (never the driver's text, which can
carry SQL and other tenants' values), the object store or the KMS being unavailable as a 503
naming it, stored content failing its integrity check as a 500 (never its bytes), anything
else as a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from app.content.envelope import ContentIntegrityError
from app.content.key_manager import KeyManagerUnavailableError, UnwrapError
from app.content.object_store import StorageUnavailableError
from app.core.errors import (
    CONTENT_INTEGRITY_MESSAGE,
    DATABASE_TIMEOUT_MESSAGE,
    DATABASE_UNAVAILABLE_MESSAGE,
    INTERNAL_ERROR_MESSAGE,
    KMS_UNAVAILABLE_MESSAGE,
    STORAGE_UNAVAILABLE_MESSAGE,
    AppError,
)
from app.middleware.no_store import PHI_RESPONSE_HEADERS

logger = logging.getLogger(__name__)


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


async def send_app_error(scope: Scope, receive: Receive, send: Send, error: AppError) -> None:
    """Answer from a pure ASGI middleware (outside the app's handlers) for a raised AppError."""
    body = error_body(error.status_code, error.code, error.message, Request(scope), **error.extra)
    response = JSONResponse(body, status_code=error.status_code, headers=error.headers)
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


def _dependency_unavailable(
    request: Request, exc: Exception, dependency: str, message: str
) -> JSONResponse:
    # The client gets a fixed text naming the dependency; its own (endpoints, keys) is logged.
    logger.warning(
        "dependency unavailable", extra={"dependency": dependency, "error": str(exc)[:500]}
    )
    return JSONResponse(
        error_body(503, "service_unavailable", message, request, dependency=dependency),
        status_code=503,
        headers={"Retry-After": "2"},
    )


def _integrity_failure(request: Request, exc: Exception) -> JSONResponse:
    logger.error("document content failed its integrity check", extra={"error": str(exc)[:500]})
    return JSONResponse(
        error_body(500, "content_integrity_error", CONTENT_INTEGRITY_MESSAGE, request),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every error a JSON body of the same shape; never a stack trace to the client."""

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

    @app.exception_handler(StorageUnavailableError)
    async def _storage_unavailable(request: Request, exc: StorageUnavailableError) -> JSONResponse:
        return _dependency_unavailable(request, exc, "object_storage", STORAGE_UNAVAILABLE_MESSAGE)

    @app.exception_handler(KeyManagerUnavailableError)
    async def _kms_unavailable(request: Request, exc: KeyManagerUnavailableError) -> JSONResponse:
        return _dependency_unavailable(request, exc, "kms", KMS_UNAVAILABLE_MESSAGE)

    @app.exception_handler(ContentIntegrityError)
    async def _content_integrity(request: Request, exc: ContentIntegrityError) -> JSONResponse:
        return _integrity_failure(request, exc)

    @app.exception_handler(UnwrapError)
    async def _unwrap_failed(request: Request, exc: UnwrapError) -> JSONResponse:
        return _integrity_failure(request, exc)

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
