"""The request context: who calls, in which tenant, from where (for handlers and audit rows)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    """The authenticated caller of one request, resolved inside the request's transaction."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    user_role: str
    request_id: str | None
    client_ip: str | None
    user_agent: str | None

    @property
    def is_admin(self) -> bool:
        """True when the caller's role in the tenant is `admin`."""
        return self.user_role == "admin"
