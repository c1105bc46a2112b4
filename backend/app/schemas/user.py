"""User shapes: what the API shows of a user, and what creating one takes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from app.schemas.common import refuse_nul

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


class UserCreate(BaseModel):
    """A new user of a tenant; `external_idp_id` is their `sub` at the identity provider."""

    model_config = ConfigDict(extra="forbid")

    email: EmailStr = Field(max_length=320)
    external_idp_id: str | None = Field(default=None, min_length=1, max_length=255)
    full_name: str | None = Field(default=None, max_length=255)
    role: UserRole = "member"

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        return refuse_nul(value)


class UserPage(BaseModel):
    """One page of users, newest first; pass `next_cursor` back for the next page."""

    items: list[UserRecord]
    next_cursor: str | None = Field(description="Opaque; null on the last page.")
