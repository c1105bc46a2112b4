"""GET /me: who the bearer token belongs to."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Tenant, read_only
from app.api.idempotency import IdempotentRoute
from app.api.responses import AUTHENTICATED_ERRORS
from app.schemas.me import Me
from app.services import me as me_service

router = APIRouter(route_class=IdempotentRoute, tags=["me"])


@router.get(
    "/me",
    response_model=Me,
    summary="The caller's user and tenant",
    responses=AUTHENTICATED_ERRORS,
)
@read_only()
async def read_me(tenant: Tenant) -> Me:
    """The authenticated user (id, email, full name, role) and their tenant (id, name, status)."""
    return me_service.me_of(tenant.caller)
