"""The caller's own user and tenant."""

from __future__ import annotations

from app.schemas import me as me_schemas
from app.services.callers import Caller


def me_of(caller: Caller) -> me_schemas.Me:
    """GET /me's answer, from the caller lookup's row: no statement of its own.

    The lookup ran a moment ago in this request's transaction and only finds an active user of
    an active tenant, so these are the current values.
    """
    return me_schemas.Me.model_validate(
        {
            "user": {
                "id": caller.user_id,
                "email": caller.email,
                "full_name": caller.full_name,
                "role": caller.role,
            },
            "tenant": {
                "id": caller.tenant_id,
                "name": caller.tenant_name,
                "status": caller.tenant_status,
            },
        }
    )
