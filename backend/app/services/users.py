"""Users of the caller's tenant: list and read (members), create, soft-delete, restore (admins)."""

from __future__ import annotations

import uuid

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import ConflictError, ForbiddenError, NotFoundError
from app.models import User
from app.schemas.user import UserCreate
from app.services import audit
from app.services.actor import Actor
from app.services.pagination import CursorCodec, PageRequest, fetch_page, query_fingerprint

RESOURCE = "user"
_UNIQUE_EMAIL = "idx_users_tenant_email_active"
_UNIQUE_SUBJECT = "idx_users_tenant_external_idp_active"


def require_admin(actor: Actor) -> None:
    """Refuse callers who are not admins of their tenant."""
    if actor.user_role != "admin":
        raise ForbiddenError("this action needs the admin role")


def _scoped(actor: Actor, *, include_deleted: bool = False) -> Select[User]:
    statement = select(User).where(User.tenant_id == actor.tenant_id)
    if not include_deleted:
        statement = statement.where(User.deleted_at.is_(None))
    return statement


async def get_user(
    session: AsyncSession, actor: Actor, user_id: uuid.UUID, *, include_deleted: bool = False
) -> User:
    """The user, or NotFoundError (the same for another tenant's id as for a random one)."""
    statement = _scoped(actor, include_deleted=include_deleted).where(User.id == user_id)
    user = (await session.execute(statement)).scalar_one_or_none()
    if user is None:
        raise NotFoundError("user not found")
    return user


async def list_users(
    session: AsyncSession,
    actor: Actor,
    page: PageRequest,
    codec: CursorCodec,
    *,
    include_deleted: bool = False,
) -> tuple[list[User], str | None]:
    """One page of the tenant's users, newest first."""
    fingerprint = query_fingerprint({"include_deleted": include_deleted})
    statement = _scoped(actor, include_deleted=include_deleted)
    return await fetch_page(session, statement, User, page, codec, actor.tenant_id, fingerprint)


async def _flush_unique(session: AsyncSession, user: User) -> None:
    """Flush in a savepoint, turning a duplicate active email or subject into a 409."""
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
        if constraint == _UNIQUE_EMAIL:
            raise ConflictError("an active user with this email already exists") from None
        if constraint == _UNIQUE_SUBJECT:
            raise ConflictError("an active user with this external_idp_id already exists") from None
        raise


async def create_user(session: AsyncSession, actor: Actor, data: UserCreate) -> User:
    """Add a user to the caller's tenant (admins only) and audit it."""
    require_admin(actor)
    user = User(
        tenant_id=actor.tenant_id,
        email=data.email,
        external_idp_id=data.external_idp_id,
        full_name=data.full_name,
        role=data.role,
    )
    session.add(user)
    await _flush_unique(session, user)
    await audit.record(
        session, actor, "user.create", RESOURCE, user.id, fields=sorted(data.model_fields_set)
    )
    return user


async def delete_user(session: AsyncSession, actor: Actor, user_id: uuid.UUID) -> None:
    """Soft-delete a user (admins only; not yourself) and audit it."""
    require_admin(actor)
    user = await get_user(session, actor, user_id)
    if user.id == actor.user_id:
        raise ConflictError("you cannot delete yourself")
    user.soft_delete()
    await session.flush()
    await audit.record(session, actor, "user.delete", RESOURCE, user.id)


async def restore_user(session: AsyncSession, actor: Actor, user_id: uuid.UUID) -> User:
    """Restore a soft-deleted user (admins only); 409 if the email was taken meanwhile."""
    require_admin(actor)
    user = await get_user(session, actor, user_id, include_deleted=True)
    if user.deleted_at is None:
        raise NotFoundError("no deleted user with this id")
    user.restore()
    await _flush_unique(session, user)
    await audit.record(session, actor, "user.restore", RESOURCE, user.id)
    return user
