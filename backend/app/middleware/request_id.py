"""Request ids and the one-line-per-request access log (a pure ASGI middleware: no extra task)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("app.access")

REQUEST_ID_HEADER = "x-request-id"
# Accept a caller's id only if it is short and harmless in logs; otherwise make our own.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{8,128}")  # fullmatch()


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _WELL_FORMED.fullmatch(candidate) else None
    return None


class RequestIdMiddleware:
    """Give every request an id (honouring a well-formed X-Request-ID), echo it, log the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status_code = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                headers: list[Any] = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # Set by the Tenant dependency once the caller is known (app.api.deps).
            context = scope["state"].get("context")
            logger.info(
                "request",
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status_code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "request_id": request_id,
                    "tenant_id": str(context.tenant_id) if context else None,
                    "user_id": str(context.user_id) if context else None,
                },
            )
