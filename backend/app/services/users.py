"""Users of a tenant: create, list, read, soft-delete and restore, each change with its audit row.

Used by the admin CLI (an operator, as app_admin) and by the API (a tenant's user, as
app_runtime, where RLS confines every statement to the caller's tenant). Emails are unique per
tenant among active users, and so are IdP subjects (`external_idp_id`): a clash is a
ConflictError, never a database error.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import lookalikes
from app.core.errors import ConflictError, NotFoundError
from app.models import SYSTEM_TENANT_ID, Tenant, User
from app.models.user import normalise_email
from app.schemas.user import UserCreate
from app.services import audit
from app.services.actor import Actor
from app.services.kit import ListFilters, TenantScoped, restore, soft_delete
from app.services.pagination import CursorCodec, PageRequest

USERS = TenantScoped(User, "user")
_UNIQUE_VIOLATION = "23505"


@dataclass(frozen=True)
class UserQuery(ListFilters):
    """Filters for listing users (only whether deleted ones are included)."""

    include_deleted: bool = False


async def create_user(session: AsyncSession, actor: Actor, data: UserCreate) -> User:
    """Add a user to the actor's tenant (admins only), which must exist and not be deleted."""
    actor.require_admin()
    tenant_id = actor.own_tenant()
    await _require_live_tenant(session, tenant_id)
    email = normalise_email(str(data.email))
    await _refuse_clash(session, tenant_id, email, data.external_idp_id, exclude_id=None)
    user = User(
        tenant_id=tenant_id,
        email=email,
        external_idp_id=data.external_idp_id,
        full_name=data.full_name,
        role=data.role,
    )
    try:
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError as exc:
        # A concurrent insert won the race the check above lost.
        if getattr(exc.orig, "sqlstate", None) == _UNIQUE_VIOLATION:
            raise ConflictError("a user with this email or IdP subject already exists") from None
        raise
    changed = ["email", "external_idp_id", "full_name", "role"]
    await audit.record(session, actor, "user.create", user, changed=changed)
    return user


async def list_users(
    session: AsyncSession, actor: Actor, *, include_deleted: bool = False
) -> list[User]:
    """The tenant's users, oldest first (the admin CLI's listing)."""
    statement = USERS.visible(actor, include_deleted=include_deleted)
    return list((await session.scalars(statement.order_by(User.created_at, User.id))).all())


async def page_users(
    session: AsyncSession,
    actor: Actor,
    query: UserQuery,
    page: PageRequest,
    codec: CursorCodec,
) -> tuple[list[User], str | None]:
    """One page of the tenant's users, newest first, and the next page's cursor."""
    statement = USERS.visible(actor, include_deleted=query.include_deleted)
    return await USERS.page(session, actor, statement, page, codec, query.fingerprint())


async def get_user(
    session: AsyncSession, actor: Actor, user_id: uuid.UUID, *, include_deleted: bool = False
) -> User:
    """A user of the tenant; NotFoundError alike for another tenant's id and a random one."""
    return await USERS.get_visible(session, actor, user_id, include_deleted=include_deleted)


async def delete_user(session: AsyncSession, actor: Actor, user_id: uuid.UUID) -> User:
    """Soft-delete a user (admins): they can no longer sign in; their rows are kept. Not oneself."""
    actor.require_admin()
    # The CLI is idempotent on a deleted user; to the API a deleted user is not there (404).
    user = await USERS.get_or_404(
        session, actor, user_id, include_deleted=actor.is_operator, for_update=True
    )
    if user.id == actor.user_id:
        raise ConflictError("you cannot delete yourself")
    await soft_delete(session, actor, user, "user.delete")
    return user


async def restore_user(session: AsyncSession, actor: Actor, user_id: uuid.UUID) -> User:
    """Undo a soft delete (admins), unless an active user now has the same email or IdP subject."""
    actor.require_admin()
    user = await USERS.get_or_404(session, actor, user_id, include_deleted=True, for_update=True)
    if not user.is_deleted:
        return user
    await _refuse_clash(
        session, user.tenant_id, user.email, user.external_idp_id, exclude_id=user.id
    )
    await restore(session, actor, user, "user.restore")
    return user


async def _require_live_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    statement = select(Tenant.id).where(
        Tenant.id == tenant_id,
        Tenant.deleted_at.is_(None),
        Tenant.id != uuid.UUID(SYSTEM_TENANT_ID),
    )
    if (await session.scalar(statement)) is None:
        raise NotFoundError(f"no tenant with id {tenant_id}")


async def _refuse_clash(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    email: str,
    external_idp_id: str | None,
    *,
    exclude_id: uuid.UUID | None,
) -> None:
    active = USERS.in_tenant(tenant_id)
    if exclude_id is not None:
        active = active.where(User.id != exclude_id)
    if (await session.scalars(active.where(User.email == email))).first() is not None:
        raise ConflictError(f"a user with email {email} already exists in this tenant")
    await _refuse_lookalike(session, active, email)
    if external_idp_id is not None:
        same_subject = active.where(User.external_idp_id == external_idp_id)
        if (await session.scalars(same_subject)).first() is not None:
            raise ConflictError(
                f"a user with external IdP id {external_idp_id} already exists in this tenant"
            )


async def _refuse_lookalike(session: AsyncSession, active: Select[User], email: str) -> None:
    """ConflictError if an active user's email looks the same as `email` (TS #39 skeleton).

    "admin@…" typed with a Cyrillic "a" (U+0430) would otherwise be a second account that
    reads as the first one in every list and audit row (docs/SECURITY.md). The tenant's
    addresses are compared in Python: one scan of a column per user creation or restore.
    """
    wanted = lookalikes.skeleton(email)
    emails = await session.scalars(active.with_only_columns(User.email))
    for existing in emails:
        if lookalikes.skeleton(existing) == wanted:
            raise ConflictError(
                f"{email} looks the same as the address of an existing user of this tenant"
                f" ({existing}); use an address that can be told apart"
            )
