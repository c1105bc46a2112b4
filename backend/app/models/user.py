"""User: a person in one tenant, identified by the IdP's subject."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from app.database.base import Base, SoftDeleteMixin, TenantKeyed

if TYPE_CHECKING:
    from app.models.audit_log import AuditLog
    from app.models.document import Document
    from app.models.tenant import Tenant

USER_ROLES = ("admin", "member")


def normalise_email(email: str) -> str:
    """Trim, NFKC-normalise and case-fold an email, so equal addresses compare equal."""
    return unicodedata.normalize("NFKC", email.strip()).casefold()


class User(TenantKeyed, SoftDeleteMixin, Base):
    """A member of one tenant. `role` is `admin` or `member` (RBAC, Feature 13, builds on it)."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'member')", name="role"),
        Index(
            "idx_users_tenant_email_active",
            "tenant_id",
            "email",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("idx_users_tenant_created", "tenant_id", text("created_at DESC")),
        Index(
            "idx_users_external_idp",
            "external_idp_id",
            postgresql_where=text("external_idp_id IS NOT NULL AND deleted_at IS NULL"),
        ),
        Index(
            "idx_users_tenant_external_idp_active",
            "tenant_id",
            "external_idp_id",
            unique=True,
            postgresql_where=text("external_idp_id IS NOT NULL AND deleted_at IS NULL"),
        ),
        {"comment": "People who use the platform, each in exactly one tenant."},
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"),
        # The key is (tenant_id, id): documents and audit rows reference a user *of the same
        # tenant* through it (composite FKs), and Citus requires the tenant in it.
        primary_key=True,
        comment="Owning tenant (RLS key).",
    )
    email: Mapped[str] = mapped_column(
        String(320), comment="Email, stored trimmed, NFKC-normalised and case-folded."
    )
    external_idp_id: Mapped[str | None] = mapped_column(
        String(255), comment="Subject (`sub`) of the user at the OIDC identity provider."
    )
    full_name: Mapped[str | None] = mapped_column(String(255), comment="Display name (PII).")
    role: Mapped[str] = mapped_column(
        String(50), server_default=text("'member'"), comment="Role in the tenant: admin or member."
    )
    last_login_at: Mapped[datetime | None] = mapped_column(
        comment="Last successful sign-in (updated at most once a minute)."
    )

    tenant: Mapped[Tenant] = relationship(back_populates="users", lazy="raise")
    documents: Mapped[list[Document]] = relationship(
        back_populates="user",
        cascade="save-update, merge",
        passive_deletes=True,
        lazy="raise",
        primaryjoin="and_(User.tenant_id == foreign(Document.tenant_id),"
        " User.id == foreign(Document.user_id))",
        overlaps="documents,tenant",
    )
    audit_logs: Mapped[list[AuditLog]] = relationship(
        back_populates="user",
        lazy="raise",
        primaryjoin="and_(User.tenant_id == foreign(AuditLog.tenant_id),"
        " User.id == foreign(AuditLog.user_id))",
        overlaps="audit_logs,tenant",
        viewonly=True,
    )

    @validates("email")
    def _normalise_email(self, _key: str, value: str) -> str:
        return normalise_email(value)

    def __repr__(self) -> str:
        return f"<User id={self.id} tenant_id={self.tenant_id} role={self.role}>"
