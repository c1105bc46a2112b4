"""Users of a tenant: create, soft-delete and restore, each with its audit row.

Used by the admin CLI (as app_admin) and by the API (as app_runtime, where RLS confines every
statement to the caller's tenant). Emails are unique per tenant among active users, and so are
IdP subjects (`external_idp_id`): a clash is a ConflictError, never a database error.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import lookalikes
from app.core.errors import ConflictError, NotFoundError
from app.models import SYSTEM_TENANT_ID, Tenant, User
from app.models.user import normalise_email
from app.schemas.user import UserCreate
from app.services.audit import AuditActor, record_change
from app.services.pagination import CursorCodec, PageRequest, fetch_page, query_fingerprint

RESOURCE_TYPE = "user"
_UNIQUE_VIOLATION = "23505"


async def create_user(
    session: AsyncSession, tenant_id: uuid.UUID, data: UserCreate, actor: AuditActor
) -> User:
    """Add a user to an existing, not deleted tenant."""
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
    await record_change(
        session,
        actor,
        tenant_id=tenant_id,
        action="user.create",
        resource_type=RESOURCE_TYPE,
        resource_id=user.id,
        changed=["email", "external_idp_id", "full_name", "role"],
    )
    return user


async def list_users(
    session: AsyncSession, tenant_id: uuid.UUID, *, include_deleted: bool = False
) -> list[User]:
    """The tenant's users, oldest first."""
    statement = select(User) if include_deleted else User.active_query()
    statement = statement.where(User.tenant_id == tenant_id).order_by(User.created_at, User.id)
    return list((await session.scalars(statement)).all())


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    """The user (soft-deleted included), locked for update; NotFoundError if there is none."""
    statement = select(User).where(User.id == user_id).with_for_update()
    user = (await session.scalars(statement)).first()
    if user is None:
        raise NotFoundError(f"no user with id {user_id}")
    return user


async def delete_user(session: AsyncSession, user_id: uuid.UUID, actor: AuditActor) -> User:
    """Soft-delete a user: they can no longer sign in; their rows are kept. Not oneself."""
    user = await get_user(session, user_id)
    if user.id == actor.user_id:
        raise ConflictError("you cannot delete yourself")
    if user.is_deleted:
        return user
    user.soft_delete()
    await session.flush()
    await _record(session, actor, user, "user.delete")
    return user


async def restore_user(session: AsyncSession, user_id: uuid.UUID, actor: AuditActor) -> User:
    """Undo a soft delete, unless an active user now has the same email or IdP subject."""
    user = await get_user(session, user_id)
    if not user.is_deleted:
        return user
    await _refuse_clash(
        session, user.tenant_id, user.email, user.external_idp_id, exclude_id=user.id
    )
    user.restore()
    await session.flush()
    await _record(session, actor, user, "user.restore")
    return user


async def _record(session: AsyncSession, actor: AuditActor, user: User, action: str) -> None:
    await record_change(
        session,
        actor,
        tenant_id=user.tenant_id,
        action=action,
        resource_type=RESOURCE_TYPE,
        resource_id=user.id,
        changed=["deleted_at"],
    )


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
    active = User.active_query().where(User.tenant_id == tenant_id)
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


async def get_tenant_user(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    include_deleted: bool = False,
) -> User:
    """A user of `tenant_id`; NotFoundError alike for another tenant's id and a random one."""
    statement = select(User) if include_deleted else User.active_query()
    statement = statement.where(User.tenant_id == tenant_id, User.id == user_id)
    user = (await session.scalars(statement)).first()
    if user is None:
        raise NotFoundError("user not found")
    return user


async def page_users(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    page: PageRequest,
    codec: CursorCodec,
    *,
    include_deleted: bool = False,
) -> tuple[list[User], str | None]:
    """One page of the tenant's users, newest first, and the next page's cursor."""
    statement = select(User) if include_deleted else User.active_query()
    statement = statement.where(User.tenant_id == tenant_id)
    fingerprint = query_fingerprint({"include_deleted": include_deleted})
    return await fetch_page(session, statement, User, page, codec, tenant_id, fingerprint)
