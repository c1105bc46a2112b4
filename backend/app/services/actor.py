"""Who acts: an API request's user, or an operator (the admin CLI, `make run`'s seeding)."""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, replace

from app.core.errors import ForbiddenError

API = "api"
ADMIN_CLI = "admin-cli"
ADMIN_ROLE_NEEDED = "this action needs the admin role"


@dataclass(frozen=True)
class Actor:
    """Who acts: a user in an API request, or an operator at the admin CLI.

    `tenant_id` scopes every statement the services build for this actor. An operator with
    no tenant (`Actor.operator()`) acts across tenants: only the admin CLI makes one, and it
    runs as app_admin.
    """

    source: str
    tenant_id: uuid.UUID | None
    user_id: uuid.UUID | None = None
    role: str = "admin"
    request_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None

    @classmethod
    def user(
        cls,
        *,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        role: str,
        request_id: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> Actor:
        """An API caller: an active user of `tenant_id` with `role`."""
        return cls(
            source=API,
            tenant_id=tenant_id,
            user_id=user_id,
            role=role,
            request_id=request_id,
            client_ip=_ip_or_none(client_ip),
            user_agent=user_agent,
        )

    @classmethod
    def operator(cls, tenant_id: uuid.UUID | None = None, *, source: str = ADMIN_CLI) -> Actor:
        """An operator (no user: the admin CLI, `make run`'s seeding), in one tenant or all."""
        return cls(source=source, tenant_id=tenant_id)

    def in_tenant(self, tenant_id: uuid.UUID) -> Actor:
        """The same actor, scoped to `tenant_id` (an operator moving to one tenant)."""
        return replace(self, tenant_id=tenant_id)

    @property
    def is_admin(self) -> bool:
        """True for an admin of the tenant and for the operator."""
        return self.role == "admin"

    @property
    def is_operator(self) -> bool:
        """True for an operator (not an API caller)."""
        return self.source != API

    def require_admin(self) -> None:
        """ForbiddenError unless the actor is an admin."""
        if not self.is_admin:
            raise ForbiddenError(ADMIN_ROLE_NEEDED)

    def may_see_deleted(self, include_deleted: bool) -> bool:
        """`include_deleted` if the actor may ask for it (admins only); ForbiddenError if not."""
        if include_deleted:
            self.require_admin()
        return include_deleted

    def own_tenant(self) -> uuid.UUID:
        """The tenant this actor acts in (an operator across tenants has none)."""
        if self.tenant_id is None:
            raise TypeError("this action needs an actor scoped to one tenant")
        return self.tenant_id


def _ip_or_none(host: str | None) -> str | None:
    """The client address if it is an IP (the column is INET); ASGI servers may give a name."""
    if host is None:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
