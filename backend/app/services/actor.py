"""Who is acting: what services need to know about the caller to scope and audit their work."""

from __future__ import annotations

import uuid
from typing import Protocol


class Actor(Protocol):
    """The authenticated caller of a request (the request context satisfies this)."""

    @property
    def tenant_id(self) -> uuid.UUID:
        """The caller's tenant."""

    @property
    def user_id(self) -> uuid.UUID:
        """The caller's user id."""

    @property
    def user_role(self) -> str:
        """`admin` or `member`."""

    @property
    def request_id(self) -> str | None:
        """The request id, recorded in audit rows."""

    @property
    def client_ip(self) -> str | None:
        """The client's IP address."""

    @property
    def user_agent(self) -> str | None:
        """The client's User-Agent header."""
