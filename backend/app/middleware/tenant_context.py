"""The edge of the tenant context: the Authorization header is checked here, before anything.

How a request gets its tenant: this middleware refuses an oversized (> 8 KiB, 431) or
duplicated (400) Authorization header before any parsing of the token. The token itself is
verified by `app.api.deps.authenticate` (no database), and the `TenantSession` dependency then
opens the request's one transaction as `app_runtime` with `app.current_tenant_id` set through
`app.database.tenant_context` (the only place that sets it) and resolves the caller in it. A
dependency rather than a middleware owns the transaction because it must commit after the
handler and *before* the response is sent, and because unauthenticated routes (health, docs)
and 401s must not open a transaction at all.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import send_error

MAX_AUTHORIZATION_BYTES = 8 * 1024


class AuthorizationHeaderGuard:
    """Answer 431 for an Authorization header over 8 KiB and 400 for more than one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope.get("headers", []) if name == b"authorization"]
        problem: tuple[int, str, str] | None = None
        if len(values) > 1:
            problem = (400, "bad_request", "send exactly one Authorization header")
        elif values and len(values[0]) > MAX_AUTHORIZATION_BYTES:
            problem = (
                431,
                "header_too_large",
                f"the Authorization header is larger than {MAX_AUTHORIZATION_BYTES} bytes",
            )
        if problem is None:
            await self.app(scope, receive, send)
            return
        await send_error(scope, receive, send, problem)
