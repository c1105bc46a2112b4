"""Request and response shapes for users."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import Field, field_validator

from app.models.user import normalise_email
from app.schemas.common import RequestModel, ResponseModel

UserRole = Literal["admin", "member"]


class UserCreate(RequestModel):
    """Add a user to the caller's tenant (admins only)."""

    email: str = Field(min_length=3, max_length=320, examples=["dana.lee@clinic.example"])
    external_idp_id: str = Field(
        min_length=1, max_length=255, description="The user's `sub` at the identity provider."
    )
    full_name: str | None = Field(default=None, max_length=255, examples=["Dana Lee"])
    role: UserRole = "member"

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        try:
            validate_email(value, check_deliverability=False)
        except EmailNotValidError as exc:
            raise ValueError(f"not a valid email address: {exc}") from None
        return normalise_email(value)


class User(ResponseModel):
    """A user of the caller's tenant."""

    id: uuid.UUID
    email: str
    full_name: str | None
    role: UserRole
    external_idp_id: str | None
    last_login_at: datetime | None
    created_at: datetime
    deleted_at: datetime | None


class UserPage(ResponseModel):
    """One page of users, newest first."""

    items: list[User]
    next_cursor: str | None
