"""Users of the caller's tenant: thin HTTP layer over app.services.users."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app.api.deps import CurrentContext, TenantSession
from app.api.params import CursorCodecDep, PageDep
from app.schemas import user as schemas
from app.services import users as users_service

router = APIRouter(prefix="/users", tags=["users"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such user in your tenant (same for other tenants')."}}
_ADMIN: dict[int | str, dict[str, Any]] = {403: {"description": "Only admins of the tenant may do this."}}


@router.get("", response_model=schemas.UserPage, summary="List the tenant's users")
async def list_users(
    session: TenantSession,
    context: CurrentContext,
    codec: CursorCodecDep,
    page: PageDep,
    include_deleted: Annotated[bool, Query(description="Admins only")] = False,
) -> schemas.UserPage:
    """Newest first, cursor-paginated."""
    if include_deleted:
        users_service.require_admin(context)
    rows, next_cursor = await users_service.list_users(
        session, context, page, codec, include_deleted=include_deleted
    )
    return schemas.UserPage(
        items=[schemas.User.model_validate(row) for row in rows], next_cursor=next_cursor
    )


@router.get("/{user_id}", response_model=schemas.User, responses=_NOT_FOUND, summary="Get one")
async def get_user(
    user_id: uuid.UUID,
    session: TenantSession,
    context: CurrentContext,
    include_deleted: Annotated[bool, Query(description="Admins only")] = False,
) -> schemas.User:
    """One user of the caller's tenant."""
    if include_deleted:
        users_service.require_admin(context)
    user = await users_service.get_user(session, context, user_id, include_deleted=include_deleted)
    return schemas.User.model_validate(user)


@router.post(
    "",
    status_code=201,
    response_model=schemas.User,
    responses={**_ADMIN, 409: {"description": "An active user has this email."}},
    summary="Add a user (admins)",
)
async def create_user(
    body: schemas.UserCreate, session: TenantSession, context: CurrentContext
) -> schemas.User:
    """Add a user to the caller's tenant; emails are unique per tenant, case-insensitively."""
    return schemas.User.model_validate(await users_service.create_user(session, context, body))


@router.delete(
    "/{user_id}",
    status_code=204,
    responses={**_ADMIN, **_NOT_FOUND},
    summary="Soft-delete a user (admins)",
)
async def delete_user(
    user_id: uuid.UUID, session: TenantSession, context: CurrentContext
) -> Response:
    """The user can no longer sign in; their documents and audit history stay."""
    await users_service.delete_user(session, context, user_id)
    return Response(status_code=204)


@router.post(
    "/{user_id}/restore",
    response_model=schemas.User,
    responses={**_ADMIN, **_NOT_FOUND, 409: {"description": "The email was taken meanwhile."}},
    summary="Restore a soft-deleted user (admins)",
)
async def restore_user(
    user_id: uuid.UUID, session: TenantSession, context: CurrentContext
) -> schemas.User:
    """Make a soft-deleted user active again."""
    return schemas.User.model_validate(await users_service.restore_user(session, context, user_id))
