"""The edge of the tenant context: the Authorization header is checked here, before anything.

This middleware sets no tenant context: it refuses an oversized (> 8 KiB, 431) or duplicated
(400) Authorization header before any parsing of the token. The token itself is verified in
`app.api.deps` (no database), and the request dependency then opens the request's
one transaction with `app.database.session.tenant_transaction`, whose first statement sets the
tenant context and looks the caller up. A dependency rather than a middleware owns the
transaction because it must commit after the handler and *before* the response is sent, and
because unauthenticated routes (health, docs) and 401s must not open a transaction at all.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import send_app_error
from app.core.errors import AppError, HeaderTooLargeError

MAX_AUTHORIZATION_BYTES = 8 * 1024


class AuthorizationHeaderGuard:
    """Answer 431 for an Authorization header over 8 KiB and 400 for more than one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call: HTTP requests are checked, anything else passes."""
        try:
            if scope["type"] == "http":
                _check_authorization_header(scope)
        except AppError as error:
            await send_app_error(scope, receive, send, error)
            return
        await self.app(scope, receive, send)


def _check_authorization_header(scope: Scope) -> None:
    """AppError for more than one Authorization header (400) or one over 8 KiB (431)."""
    values = [value for name, value in scope.get("headers", []) if name == b"authorization"]
    if len(values) > 1:
        raise AppError("send exactly one Authorization header")
    if values and len(values[0]) > MAX_AUTHORIZATION_BYTES:
        raise HeaderTooLargeError(
            f"the Authorization header is larger than {MAX_AUTHORIZATION_BYTES} bytes"
        )
