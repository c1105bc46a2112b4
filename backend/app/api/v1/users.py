"""Users of the caller's tenant: thin HTTP layer over app.services.users."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import AdminTenant, Tenant, read_only
from app.api.idempotency import IdempotentRoute
from app.api.params import CursorCodecDep, PageDep
from app.api.responses import API_ERRORS, Responses, error_response
from app.schemas import user as schemas
from app.schemas.common import page_of
from app.services import users as users_service

router = APIRouter(
    route_class=IdempotentRoute, prefix="/users", tags=["users"], responses=API_ERRORS
)
_NOT_FOUND: Responses = {
    404: error_response("No such user in your tenant (the same for other tenants' ids).")
}
_ADMIN: Responses = {
    403: error_response("Only admins of the tenant may do this (or the token's user is inactive).")
}


@router.get(
    "", response_model=schemas.UserPage, responses=_ADMIN, summary="List the tenant's users"
)
@read_only()
async def list_users(
    tenant: Tenant,
    codec: CursorCodecDep,
    page: PageDep,
    include_deleted: Annotated[bool, Query(description="Admins only")] = False,
) -> schemas.UserPage:
    """Newest first, cursor-paginated."""
    query = users_service.UserQuery(include_deleted=include_deleted)
    rows, next_cursor = await users_service.page_users(
        tenant.session, tenant.actor, query, page, codec
    )
    return page_of(schemas.UserPage, rows, next_cursor)


@router.get(
    "/{user_id}",
    response_model=schemas.UserRecord,
    responses={**_NOT_FOUND, **_ADMIN},
    summary="Get one user",
)
@read_only()
async def get_user(
    user_id: uuid.UUID,
    tenant: Tenant,
    include_deleted: Annotated[bool, Query(description="Admins only")] = False,
) -> schemas.UserRecord:
    """One user of the caller's tenant."""
    user = await users_service.get_user(
        tenant.session, tenant.actor, user_id, include_deleted=include_deleted
    )
    return schemas.UserRecord.model_validate(user)


@router.post(
    "",
    status_code=201,
    response_model=schemas.UserRecord,
    responses={**_ADMIN, 409: error_response("An active user has this email or IdP subject.")},
    summary="Add a user (admins)",
)
async def create_user(body: schemas.UserCreate, tenant: AdminTenant) -> schemas.UserRecord:
    """Add a user to the caller's tenant; emails are unique per tenant, case-insensitively."""
    user = await users_service.create_user(tenant.session, tenant.actor, body)
    return schemas.UserRecord.model_validate(user)


@router.delete(
    "/{user_id}",
    status_code=204,
    responses={**_ADMIN, **_NOT_FOUND, 409: error_response("You cannot delete yourself.")},
    summary="Soft-delete a user (admins)",
)
async def delete_user(user_id: uuid.UUID, tenant: AdminTenant) -> Response:
    """The user can no longer sign in; their documents and audit history stay."""
    await users_service.delete_user(tenant.session, tenant.actor, user_id)
    return Response(status_code=204)


@router.post(
    "/{user_id}/restore",
    response_model=schemas.UserRecord,
    responses={
        **_ADMIN,
        **_NOT_FOUND,
        409: error_response("An active user has taken the email or IdP subject meanwhile."),
    },
    summary="Restore a soft-deleted user (admins)",
)
async def restore_user(user_id: uuid.UUID, tenant: AdminTenant) -> schemas.UserRecord:
    """Make a soft-deleted user active again (an active one is returned unchanged)."""
    user = await users_service.restore_user(tenant.session, tenant.actor, user_id)
    return schemas.UserRecord.model_validate(user)
