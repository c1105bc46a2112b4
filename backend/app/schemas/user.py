"""User shapes: what the API shows of a user, and what creating one takes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from app.schemas.common import RequestModel, Text

UserRole = Literal["admin", "member"]


class User(BaseModel):
    """A user of the caller's tenant."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    full_name: str | None
    role: UserRole


class UserRecord(User):
    """A user as the operator sees it (admin CLI)."""

    tenant_id: uuid.UUID
    external_idp_id: str | None
    created_at: datetime
    last_login_at: datetime | None
    deleted_at: datetime | None


class UserCreate(RequestModel):
    """A new user of a tenant; `external_idp_id` is their `sub` at the identity provider."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "email": "dr.jones@clinic.example",
                    "external_idp_id": "auth0|64f1c2",
                    "full_name": "Dr. Ada Jones",
                    "role": "member",
                }
            ]
        }
    )

    email: EmailStr = Field(max_length=320, examples=["dr.jones@clinic.example"])
    external_idp_id: Text | None = Field(
        default=None, min_length=1, max_length=255, examples=["auth0|64f1c2"]
    )
    full_name: Text | None = Field(default=None, max_length=255, examples=["Dr. Ada Jones"])
    role: UserRole = "member"


class UserPage(BaseModel):
    """One page of users, newest first; pass `next_cursor` back for the next page."""

    items: list[UserRecord]
    next_cursor: str | None = Field(description="Opaque; null on the last page.")
