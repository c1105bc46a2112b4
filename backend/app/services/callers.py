"""Who is calling: the verified token's tenant and subject, resolved to an active user.

One statement, the first of the request's transaction: `tenant_transaction` folds it into
the statement that sets the tenant context to the token's tenant (no round trip of its own),
and it reads the tenant and the matching active user under RLS, with every column `GET /me`
shows (so /me needs no statement of its own). At most once a minute per user a second
statement stamps `users.last_login_at`. (It used to be a data-modifying CTE of the same
statement, but PostgreSQL runs such a CTE in no defined order relative to the rest of the
statement, so it could run before the context is set and, under RLS, update nothing.)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.identity import VerifiedIdentity
from app.core.errors import ForbiddenError
from app.database.tenant_context import BoundOpening, OpeningQuery
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

CALLER_LOOKUP = OpeningQuery(CALLER_QUERY)

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


def caller_lookup(identity: VerifiedIdentity) -> BoundOpening:
    """The caller lookup for `identity`, to open the request's `tenant_transaction` with."""
    return CALLER_LOOKUP.bind(tenant_id=identity.tenant_id, subject=identity.subject)


async def resolve_caller(
    session: AsyncSession,
    identity: VerifiedIdentity,
    lookup_rows: Sequence[Row[Any]],
    *,
    stamp: bool = True,
) -> Caller:
    """The caller the opening lookup found; ForbiddenError unless tenant and user are active.

    `lookup_rows` are the `opening_rows` of a transaction opened with `caller_lookup(identity)`.
    `stamp=False` (a read replica's read-only transaction): leave `last_login_at` alone; the
    caller stamps it on the primary with `stamp_last_login` when `stamp_due(lookup_rows)`.
    """
    if not lookup_rows:
        raise ForbiddenError(NO_ACCESS_MESSAGE)
    row = lookup_rows[0]
    caller = caller_from_row(identity.tenant_id, row)
    if stamp and row.stamp_due:
        await stamp_last_login(session, caller)
    return caller


def stamp_due(lookup_rows: Sequence[Row[Any]]) -> bool:
    """True when the caller's `last_login_at` is due a new stamp (at most once a minute)."""
    return bool(lookup_rows and lookup_rows[0].stamp_due)


async def stamp_last_login(session: AsyncSession, caller: Caller) -> None:
    """Stamp the caller's `last_login_at` now, unless done within the last minute."""
    # Re-checked in the UPDATE, so concurrent first requests stamp once.
    await session.execute(_STAMP, {"caller_tenant": caller.tenant_id, "caller_id": caller.user_id})


def caller_from_row(tenant_id: uuid.UUID, row: Row[Any]) -> Caller:
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
