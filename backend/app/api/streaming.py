"""A streamed response whose source is opened only as it is sent, and ended when the client
stops reading (GET /tenant/export: a source that holds a pooled connection and a lock).

Starlette's `StreamingResponse` takes an iterator that is already made: whatever it holds is
held from the handler's return, released only if iteration starts and ends, and a client that
stops reading suspends it for as long as the server keeps the connection. This one takes a
context manager instead: it is entered when the response is called and exited on every way
out of sending (the body sent, the client gone, an error mid-stream, the task cancelled at
server shutdown); a response dropped before it is called never opens it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

BodySource = Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes]]]
"""Opens the body's chunks; its exit releases whatever producing them holds."""


class IdleBoundedStreamingResponse(StreamingResponse):
    """Stream the chunks `open_body` yields; end the stream when one waits `idle_seconds`.

    `open_body` is entered before the status line is sent, so an error it raises (e.g. a 429
    from a lock it could not take) is answered by the app's error handlers like any other.
    A chunk the client has not taken after `idle_seconds` (the server's send is blocked by
    TCP flow control) ends the stream without its final empty chunk: the server closes the
    connection and the client sees a cut-short download, never a complete-looking one.
    """

    def __init__(
        self,
        open_body: BodySource,
        *,
        idle_seconds: float,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        # Not StreamingResponse.__init__: there is no iterator yet (it is opened on send).
        self.status_code = status_code
        self.media_type = self.media_type if media_type is None else media_type
        self.background = None
        self.init_headers(headers)
        self._open_body = open_body
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Open the body, send it, close it on every way out."""
        async with self._open_body() as chunks:
            self.body_iterator = chunks
            await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        """Send the status line and the chunks, each within `idle_seconds`."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            try:
                async with asyncio.timeout(self.idle_seconds):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TimeoutError:
                logger.warning(
                    "streamed response ended: its client read nothing for %g s", self.idle_seconds
                )
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
