"""The consistency token header on the response to a write (read replicas, docs/SCALING.md)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.database.replicas import CONSISTENCY_HEADER


class ConsistencyTokenHeader:
    """Send the token a committed write left in `request.state.consistency_token`.

    The request's transaction commits after the handler has built its response and before the
    response starts (app/api/deps.py), so the header is added here, as the response starts.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start":
                token = scope.get("state", {}).get("consistency_token")
                if token is not None:
                    MutableHeaders(scope=message)[CONSISTENCY_HEADER] = token
            await send(message)

        await self.app(scope, receive, send_with_token)
