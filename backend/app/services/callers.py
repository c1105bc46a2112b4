"""Who is calling: the verified token's tenant and subject, resolved to an active user.

One statement, the first of the request's transaction: it sets the tenant context to the
token's tenant (`scoped_to_tenant`, so the context costs no round trip of its own) and reads
the tenant and the matching active user under RLS, with every column `GET /me` shows (so /me
needs no statement of its own). At most once a minute per user a second
statement stamps `users.last_login_at`. (It used to be a data-modifying CTE of the same
statement, but PostgreSQL runs such a CTE in no defined order relative to the rest of the
statement, so it could run before the context is set and, under RLS, update nothing.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.tokens import VerifiedIdentity
from app.core.errors import ForbiddenError
from app.database.tenant_context import scoped_to_tenant, tenant_parameter
from app.models import Tenant, User

LAST_LOGIN_RESOLUTION = timedelta(minutes=1)
# One message for every reason, so a caller learns nothing about which tenants or users exist.
NO_ACCESS_MESSAGE = "this account has no access to the tenant named in the token"


@dataclass(frozen=True)
class Caller:
    """The active user a token resolved to, their role, and what GET /me shows of them."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    role: str
    email: str
    full_name: str | None
    tenant_name: str
    tenant_status: str


_STAMP_DUE = or_(
    User.last_login_at.is_(None), User.last_login_at < func.now() - LAST_LOGIN_RESOLUTION
)

# Built once: a request only binds values (building a statement costs more than running it).
CALLER_QUERY = (
    select(
        User.id,
        User.role,
        User.email,
        User.full_name,
        Tenant.name.label("tenant_name"),
        Tenant.status.label("tenant_status"),
        _STAMP_DUE.label("stamp_due"),
    )
    .join(Tenant, Tenant.id == User.tenant_id)
    .where(
        Tenant.id == bindparam("tenant_id"),
        Tenant.status == "active",
        Tenant.deleted_at.is_(None),
        User.tenant_id == bindparam("tenant_id"),
        User.external_idp_id == bindparam("subject"),
        User.deleted_at.is_(None),
    )
)
"""The lookup without the context (bench/http_cost.py's baseline runs it as app_admin)."""

_RESOLVE = scoped_to_tenant(CALLER_QUERY)

# SKIP LOCKED: while one request holds the user's row to stamp it, the user's concurrent
# requests skip the stamp instead of queueing behind that whole request for the row lock.
_STAMPABLE = (
    select(User.id)
    .where(
        User.tenant_id == bindparam("caller_tenant"), User.id == bindparam("caller_id"), _STAMP_DUE
    )
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_STAMP = update(User).where(User.id == _STAMPABLE).values(last_login_at=func.now())


async def resolve_caller(session: AsyncSession, identity: VerifiedIdentity) -> Caller:
    """The caller for `identity`; ForbiddenError unless both tenant and user are active.

    Must be the first statement of a transaction opened without a tenant context: it sets the
    context to the token's tenant in the same statement.
    """
    tenant_id = identity.tenant_id
    parameters = {
        **tenant_parameter(tenant_id),
        "tenant_id": tenant_id,
        "subject": identity.subject,
    }
    row = (await session.execute(_RESOLVE, parameters)).first()
    if row is None:
        raise ForbiddenError(NO_ACCESS_MESSAGE)
    if row.stamp_due:
        # Re-checked in the UPDATE, so concurrent first requests stamp once.
        await session.execute(_STAMP, {"caller_tenant": tenant_id, "caller_id": row.id})
    return _caller(tenant_id, row)


async def find_caller_without_context(
    session: AsyncSession, tenant_id: uuid.UUID, subject: str
) -> Caller:
    """The same lookup with no tenant context and no stamp (benchmark baseline, as app_admin)."""
    row = (
        await session.execute(CALLER_QUERY, {"tenant_id": tenant_id, "subject": subject})
    ).first()
    if row is None:
        raise ForbiddenError(NO_ACCESS_MESSAGE)
    return _caller(tenant_id, row)


def _caller(tenant_id: uuid.UUID, row: Row[*tuple[Any, ...]]) -> Caller:
    return Caller(
        tenant_id=tenant_id,
        user_id=row.id,
        role=row.role,
        email=row.email,
        full_name=row.full_name,
        tenant_name=row.tenant_name,
        tenant_status=row.tenant_status,
    )
