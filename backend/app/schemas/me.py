"""GET /me: the caller and their tenant."""

from __future__ import annotations

from pydantic import BaseModel

from app.schemas.tenant import Tenant
from app.schemas.user import User


class Me(BaseModel):
    """The authenticated user and the tenant the request runs in."""

    user: User
    tenant: Tenant
