"""OpenAPI descriptions of the error responses routes share (all with the one error body)."""

from __future__ import annotations

from typing import Any

from app.schemas.errors import ErrorResponse

Responses = dict[int | str, dict[str, Any]]


def error_response(description: str) -> dict[str, Any]:
    """An error response in the OpenAPI document: the shared JSON body and what it means."""
    return {"model": ErrorResponse, "description": description}


AUTHENTICATED_ERRORS: Responses = {
    401: error_response(
        "No bearer token, or it is expired or invalid (`error.reason` says which)."
    ),
    403: error_response("The token is valid, but its tenant or user is unknown or inactive."),
    429: error_response(
        "The caller's tenant is over its request-rate or concurrency limit; retry after the"
        " `Retry-After` header's seconds."
    ),
    503: error_response(
        "The database is unavailable, busy or timed out (nothing was saved); retry after"
        " `Retry-After`."
    ),
}

# Replaces FastAPI's default 422 body (`detail`), which is not what the API sends.
VALIDATION_ERROR: Responses = {
    422: error_response(
        "Invalid input: `error.message` and `error.details` name each field and what is wrong."
    )
}

MALFORMED_REQUEST: Responses = {
    400: error_response(
        "Malformed request: a body that cannot be parsed (not UTF-8, or nested too deeply to"
        " parse), or two Authorization headers."
    )
}

BODY_LIMITS: Responses = {
    413: error_response("The request body is over the configured size limit."),
    415: error_response("The request body is not JSON (`Content-Type: application/json`)."),
}

API_ERRORS: Responses = {
    **MALFORMED_REQUEST,
    **AUTHENTICATED_ERRORS,
    **VALIDATION_ERROR,
    **BODY_LIMITS,
}
"""Errors any authenticated route with parameters or a body can answer."""
