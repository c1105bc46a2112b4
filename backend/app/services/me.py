"""The caller's own user and tenant."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.context import RequestContext
from app.core.errors import ForbiddenError
from app.models import Tenant, User
from app.schemas import me as me_schemas
from app.schemas.tenant import Tenant as TenantSchema
from app.schemas.user import User as UserSchema
from app.services.callers import NO_ACCESS_MESSAGE


async def get_me(session: AsyncSession, context: RequestContext) -> me_schemas.Me:
    """The caller and their tenant, read in one query (filtered explicitly; RLS as backstop)."""
    statement = (
        select(User, Tenant)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(User.id == context.user_id, User.tenant_id == context.tenant_id)
    )
    row = (await session.execute(statement)).first()
    if row is None:  # resolved a moment ago in this transaction, so only a concurrent change
        raise ForbiddenError(NO_ACCESS_MESSAGE)
    user, tenant = row
    return me_schemas.Me(
        user=UserSchema.model_validate(user), tenant=TenantSchema.model_validate(tenant)
    )
