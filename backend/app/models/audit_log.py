"""AuditLog: the append-only record of who did what, in which tenant."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    FetchedValue,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Session, UOWTransaction, mapped_column, relationship

from app.database.base import Base, TenantKeyed, column_added_later

if TYPE_CHECKING:
    from app.models.tenant import Tenant
    from app.models.user import User


class ImmutableAuditLogError(RuntimeError):
    """Raised in Python when code tries to change or delete an audit row."""


class AuditLog(TenantKeyed, Base):
    """One audit event. Rows are written with `AuditLog.create` and never changed or deleted."""

    __tablename__ = "audit_logs"
    __table_args__ = (
        # No foreign key to users: audit rows outlive the users they name (offboarding and the
        # retention purge erase users; the append-only trail keeps their bare ids).
        Index(
            "idx_audit_logs_tenant_created", "tenant_id", text("created_at DESC"), text("id DESC")
        ),
        Index(
            "idx_audit_logs_user_created",
            "user_id",
            text("created_at DESC"),
            postgresql_where=text("user_id IS NOT NULL"),
        ),
        Index("idx_audit_logs_action", "action"),
        Index("idx_audit_logs_resource", "resource_type", "resource_id"),
        Index("idx_audit_logs_metadata_gin", "metadata", postgresql_using="gin"),
        UniqueConstraint("tenant_id", "chain_seq"),
        {"comment": "Append-only audit trail; UPDATE, DELETE and TRUNCATE are refused."},
    )

    # Append-only: no update timestamp (and no soft delete).
    updated_at = None  # type: ignore[assignment]

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"),
        primary_key=True,
        comment="Tenant the event belongs to.",
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        comment="Acting user (same tenant), or NULL for system and admin-CLI actions."
    )
    action: Mapped[str] = mapped_column(
        String(100), comment="What happened, as resource.verb (e.g. document.create)."
    )
    resource_type: Mapped[str] = mapped_column(String(100), comment="Kind of resource acted on.")
    resource_id: Mapped[uuid.UUID | None] = mapped_column(comment="Id of the resource acted on.")
    ip_address: Mapped[IPv4Address | IPv6Address | None] = mapped_column(
        INET, comment="Client IP address of the request."
    )
    user_agent: Mapped[str | None] = mapped_column(Text, comment="Client User-Agent header.")
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata",
        JSONB,
        server_default=text("'{}'::jsonb"),
        comment="Event details (request id, changed field names); never document contents.",
    )

    # The hash chain (docs/AUDIT_INTEGRITY.md): set by the database's BEFORE INSERT trigger,
    # which overwrites anything sent, so the ORM never sends them and reads them back.
    chain_seq: Mapped[int] = column_added_later(
        BigInteger,
        server_default=FetchedValue(),
        comment="Position in the tenant's hash chain (1, 2, …), set by a trigger.",
    )
    prev_hash: Mapped[bytes] = column_added_later(
        LargeBinary,
        server_default=FetchedValue(),
        comment="row_hash of the previous row in the tenant's chain (zeros for the first).",
    )
    row_hash: Mapped[bytes] = column_added_later(
        LargeBinary,
        server_default=FetchedValue(),
        comment="SHA-256 of the row's canonical encoding (docs/AUDIT_INTEGRITY.md).",
    )

    tenant: Mapped[Tenant] = relationship(back_populates="audit_logs", lazy="raise")
    user: Mapped[User | None] = relationship(
        back_populates="audit_logs",
        lazy="raise",
        primaryjoin="and_(User.tenant_id == foreign(AuditLog.tenant_id),"
        " User.id == foreign(AuditLog.user_id))",
        overlaps="audit_logs,tenant",
        viewonly=True,
    )

    @classmethod
    async def create(
        cls,
        session: AsyncSession,
        *,
        tenant_id: uuid.UUID,
        action: str,
        resource_type: str,
        resource_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        ip_address: str | None = None,
        user_agent: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AuditLog:
        """Append an audit row in the session's transaction (the only way to write one)."""
        entry = cls(
            tenant_id=tenant_id,
            user_id=user_id,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            ip_address=ip_address,
            user_agent=user_agent,
            metadata_=metadata or {},
        )
        session.add(entry)
        await session.flush()
        return entry

    def __repr__(self) -> str:
        return f"<AuditLog id={self.id} tenant_id={self.tenant_id} action={self.action}>"


audit_chain_heads = Table(
    "audit_chain_heads",
    Base.metadata,
    Column(
        "tenant_id",
        Uuid,
        ForeignKey("tenants.id", ondelete="RESTRICT"),
        primary_key=True,
        comment="Tenant whose chain this is the head of.",
    ),
    Column("last_seq", BigInteger, nullable=False, comment="chain_seq of the newest row."),
    Column("last_hash", LargeBinary, nullable=False, comment="row_hash of the newest row."),
    Column(
        "prev_hash",
        LargeBinary,
        nullable=True,
        comment="last_hash before the newest row (its prev_hash); set by the chain trigger.",
    ),
    comment="Newest link of each tenant's audit chain; written only by the chain trigger.",
)
"""Each tenant's chain head. Only the chain trigger writes it; the admin role may read it."""


@event.listens_for(Session, "before_flush")
def _refuse_audit_log_changes(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
    """The ORM refuses to UPDATE or DELETE an audit row; the database triggers refuse it too."""
    for obj in session.deleted:
        if isinstance(obj, AuditLog):
            raise ImmutableAuditLogError("audit log entries cannot be deleted")
    for obj in session.dirty:
        if isinstance(obj, AuditLog) and session.is_modified(obj):
            raise ImmutableAuditLogError("audit log entries cannot be modified")
