"""Users of the caller's tenant: thin HTTP layer over app.services.users."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app.api.deps import AdminContext, CurrentContext, TenantSession, require_admin
from app.api.params import CursorCodecDep, PageDep
from app.api.responses import AUTHENTICATED_ERRORS
from app.core.errors import ConflictError
from app.schemas import user as schemas
from app.services import users as users_service
from app.services.audit import AuditActor

router = APIRouter(prefix="/users", tags=["users"], responses=AUTHENTICATED_ERRORS)
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such user in your tenant (the same for other tenants' ids)."}
}
_ADMIN: dict[int | str, dict[str, Any]] = {
    403: {"description": "Only admins of the tenant may do this."}
}


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
        require_admin(context)
    rows, next_cursor = await users_service.page_users(
        session, context.tenant_id, page, codec, include_deleted=include_deleted
    )
    return schemas.UserPage(
        items=[schemas.UserRecord.model_validate(row) for row in rows], next_cursor=next_cursor
    )


@router.get(
    "/{user_id}", response_model=schemas.UserRecord, responses=_NOT_FOUND, summary="Get one"
)
async def get_user(
    user_id: uuid.UUID,
    session: TenantSession,
    context: CurrentContext,
    include_deleted: Annotated[bool, Query(description="Admins only")] = False,
) -> schemas.UserRecord:
    """One user of the caller's tenant."""
    if include_deleted:
        require_admin(context)
    user = await users_service.get_tenant_user(
        session, context.tenant_id, user_id, include_deleted=include_deleted
    )
    return schemas.UserRecord.model_validate(user)


@router.post(
    "",
    status_code=201,
    response_model=schemas.UserRecord,
    responses={**_ADMIN, 409: {"description": "An active user has this email or IdP subject."}},
    summary="Add a user (admins)",
)
async def create_user(
    body: schemas.UserCreate, session: TenantSession, context: AdminContext
) -> schemas.UserRecord:
    """Add a user to the caller's tenant; emails are unique per tenant, case-insensitively."""
    user = await users_service.create_user(
        session, context.tenant_id, body, AuditActor.from_request(context)
    )
    return schemas.UserRecord.model_validate(user)


@router.delete(
    "/{user_id}",
    status_code=204,
    responses={**_ADMIN, **_NOT_FOUND, 409: {"description": "You cannot delete yourself."}},
    summary="Soft-delete a user (admins)",
)
async def delete_user(
    user_id: uuid.UUID, session: TenantSession, context: AdminContext
) -> Response:
    """The user can no longer sign in; their documents and audit history stay."""
    user = await users_service.get_tenant_user(session, context.tenant_id, user_id)
    if user.id == context.user_id:
        raise ConflictError("you cannot delete yourself")
    await users_service.delete_user(session, user.id, AuditActor.from_request(context))
    return Response(status_code=204)


@router.post(
    "/{user_id}/restore",
    response_model=schemas.UserRecord,
    responses={**_ADMIN, **_NOT_FOUND, 409: {"description": "The email was taken meanwhile."}},
    summary="Restore a soft-deleted user (admins)",
)
async def restore_user(
    user_id: uuid.UUID, session: TenantSession, context: AdminContext
) -> schemas.UserRecord:
    """Make a soft-deleted user active again."""
    user = await users_service.get_tenant_user(
        session, context.tenant_id, user_id, include_deleted=True
    )
    restored = await users_service.restore_user(session, user.id, AuditActor.from_request(context))
    return schemas.UserRecord.model_validate(restored)
