"""Who is calling: the verified token's tenant and subject, resolved to an active user.

One statement, inside the request's transaction (tenant context already set, so RLS shows
only the token's tenant): it reads the tenant and the matching active user and, at most once
a minute per user, stamps `users.last_login_at` in a data-modifying CTE, so the stamp costs no
extra round trip and is skipped entirely when it is not due.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.tokens import VerifiedIdentity
from app.core.errors import ForbiddenError
from app.models import Tenant, User

LAST_LOGIN_RESOLUTION = timedelta(minutes=1)
# One message for every reason, so a caller learns nothing about which tenants or users exist.
NO_ACCESS_MESSAGE = "this account has no access to the tenant named in the token"


@dataclass(frozen=True)
class Caller:
    """The active user a token resolved to, and their role."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    role: str


async def resolve_caller(session: AsyncSession, identity: VerifiedIdentity) -> Caller:
    """The caller for `identity`; ForbiddenError unless both tenant and user are active."""
    tenant_id = identity.tenant_id
    tenant_active = and_(
        Tenant.id == tenant_id, Tenant.status == "active", Tenant.deleted_at.is_(None)
    )
    caller = (
        select(User.id, User.role)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(
            tenant_active,
            User.tenant_id == tenant_id,
            User.external_idp_id == identity.subject,
            User.deleted_at.is_(None),
        )
        .cte("caller")
    )
    stamp = (
        update(User)
        .where(
            User.tenant_id == tenant_id,
            User.id.in_(select(caller.c.id)),
            or_(
                User.last_login_at.is_(None),
                User.last_login_at < func.now() - LAST_LOGIN_RESOLUTION,
            ),
        )
        .values(last_login_at=func.now())
        .returning(User.id)
        .cte("stamp")
    )
    # Selecting from the CTE makes SQLAlchemy render it; PostgreSQL runs it either way.
    statement = select(
        caller.c.id, caller.c.role, stamp.c.id.is_not(None).label("stamped")
    ).outerjoin(stamp, stamp.c.id == caller.c.id)
    row = (await session.execute(statement)).first()
    if row is None:
        raise ForbiddenError(NO_ACCESS_MESSAGE)
    return Caller(tenant_id=tenant_id, user_id=row.id, role=row.role)
