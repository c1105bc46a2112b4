"""Who is calling: the verified token's tenant and subject, resolved to an active user.

One statement, the first after the request's `tenant_transaction` has set the tenant context
to the token's tenant: it reads the tenant and the matching active user under RLS, with every
column `GET /me` shows (so /me needs no statement of its own). The request path skips it while
app/services/caller_cache.py holds a fresh answer for the same token subject. At most once a
minute per user a second statement stamps `users.last_login_at`. (Not a data-modifying CTE of
the lookup: PostgreSQL runs such a CTE in no defined order relative to the rest of the
statement.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.identity import VerifiedIdentity
from app.core.errors import ForbiddenError
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
"""The lookup itself (bench/baseline.py runs it as app_admin, without a context)."""

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
# The tenant named in the UPDATE's own WHERE too: that routes it to one Citus shard.
_STAMP = (
    update(User)
    .where(User.tenant_id == bindparam("caller_tenant"), User.id == _STAMPABLE)
    .values(last_login_at=func.now())
)


async def resolve_caller(session: AsyncSession, identity: VerifiedIdentity) -> Caller:
    """The active user `identity` names; ForbiddenError unless tenant and user are active.

    `session` is in a `tenant_transaction` of the token's tenant, on the primary (the stamp
    writes).
    """
    lookup = {"tenant_id": identity.tenant_id, "subject": identity.subject}
    row = (await session.execute(CALLER_QUERY, lookup)).first()
    if row is None:
        raise ForbiddenError(NO_ACCESS_MESSAGE)
    if row.stamp_due:
        # Re-checked in the UPDATE, so concurrent first requests stamp once.
        await session.execute(_STAMP, {"caller_tenant": identity.tenant_id, "caller_id": row.id})
    return caller_from_row(identity.tenant_id, row)


def caller_from_row(tenant_id: uuid.UUID, row: Row[*tuple[Any, ...]]) -> Caller:
    """The Caller a CALLER_QUERY row describes."""
    return Caller(
        tenant_id=tenant_id,
        user_id=row.id,
        role=row.role,
        email=row.email,
        full_name=row.full_name,
        tenant_name=row.tenant_name,
        tenant_status=row.tenant_status,
    )
