"""Tenant: an organisation whose data RLS keeps apart from every other tenant's."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.database.base import Base, SoftDeleteMixin, column_added_later

if TYPE_CHECKING:
    from app.models.audit_log import AuditLog
    from app.models.document import Document
    from app.models.user import User


SYSTEM_TENANT_ID = "00000000-0000-0000-0000-000000000000"
TENANT_STATUSES = ("active", "suspended", "offboarding", "offboarded")


class Tenant(SoftDeleteMixin, Base):
    """A customer organisation; the unit of isolation."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint(
            "status IN ('active', 'suspended', 'offboarding', 'offboarded')", name="status"
        ),
        Index("idx_tenants_status", "status", postgresql_where=text("deleted_at IS NULL")),
        Index(
            "idx_tenants_deleted_at", "deleted_at", postgresql_where=text("deleted_at IS NOT NULL")
        ),
        {"comment": "Organisations using the platform; every tenant-owned row points here."},
    )

    name: Mapped[str] = mapped_column(String(255), comment="Display name of the organisation.")
    status: Mapped[str] = mapped_column(
        String(50),
        server_default=text("'active'"),
        comment="Lifecycle status: active, suspended, offboarding (access revoked, grace period)"
        " or offboarded (tombstone); only active tenants can sign in.",
    )
    kms_key_arn: Mapped[str | None] = mapped_column(
        String(2048),
        comment="The tenant's own key: an AWS KMS key ARN or an OpenBao transit key name.",
    )

    offboard_scheduled_at: Mapped[datetime | None] = column_added_later(
        comment="When `offboard-tenant --schedule` revoked access (NULL: never).",
    )
    offboard_after: Mapped[datetime | None] = column_added_later(
        comment="End of the grace period: `--execute` is refused before it.",
    )
    offboarded_at: Mapped[datetime | None] = column_added_later(
        comment="When `offboard-tenant --execute` finished: the row is a tombstone.",
    )

    users: Mapped[list[User]] = relationship(
        back_populates="tenant", cascade="save-update, merge", passive_deletes=True, lazy="raise"
    )
    documents: Mapped[list[Document]] = relationship(
        back_populates="tenant", cascade="save-update, merge", passive_deletes=True, lazy="raise"
    )
    audit_logs: Mapped[list[AuditLog]] = relationship(
        back_populates="tenant", cascade="save-update, merge", passive_deletes=True, lazy="raise"
    )

    def __repr__(self) -> str:
        return f"<Tenant id={self.id} status={self.status} deleted={self.deleted_at is not None}>"
