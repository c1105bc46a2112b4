"""Tenant shapes: what the API shows of a tenant, and what the admin CLI creates and lists."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TenantStatus = Literal["active", "suspended", "offboarding", "offboarded"]


class Tenant(BaseModel):
    """A tenant as its members see it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    status: TenantStatus


class TenantRecord(Tenant):
    """A tenant as the operator sees it (admin CLI)."""

    kms_key_arn: str | None
    created_at: datetime
    deleted_at: datetime | None


class TenantCreate(BaseModel):
    """A new tenant."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    kms_key_ref: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="An existing key to use (AWS KMS key ARN or OpenBao transit key name);"
        " unset: a new key is created for the tenant.",
    )

    @field_validator("name")
    @classmethod
    def _strip_name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("the tenant name must not be blank")
        return value


class RotationRecord(BaseModel):
    """What `rotate-tenant-key` did (admin CLI)."""

    model_config = ConfigDict(from_attributes=True)

    tenant_id: uuid.UUID
    kms_key_arn: str
    key_version: int | None = Field(description="The key's new version (None: AWS KMS).")
    rewrapped: int = Field(description="Data keys rewrapped under it.")
