"""Document: a stored file's metadata, its processing status and its embedding."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, column_property, mapped_column, relationship

from app.database import vector_search
from app.database.base import Base, SoftDeleteMixin, TenantKeyed, column_added_later
from app.database.vector_search import EMBEDDING_DIMENSIONS, SearchFilters, SearchHit

if TYPE_CHECKING:
    from app.models.tenant import Tenant
    from app.models.user import User

DOCUMENT_STATUSES = ("processing", "completed", "failed")
__all__ = ["DOCUMENT_STATUSES", "EMBEDDING_DIMENSIONS", "Document"]


class Document(TenantKeyed, SoftDeleteMixin, Base):
    """A document registered by a user of a tenant."""

    __tablename__ = "documents"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "user_id"],
            ["users.tenant_id", "users.id"],
            name="fk_documents_tenant_id_user_id_users",
            ondelete="RESTRICT",
        ),
        CheckConstraint("status IN ('processing', 'completed', 'failed')", name="status"),
        CheckConstraint("size_bytes >= 0", name="size_bytes_non_negative"),
        CheckConstraint("chunk_count >= 0", name="chunk_count_non_negative"),
        CheckConstraint(
            "num_nulls(content_object_key, content_wrapped_key, content_key_ref, content_sha256,"
            " content_uploaded_at) IN (0, 5)",
            name="content_all_or_none",
        ),
        CheckConstraint("content_sha256 ~ '^[0-9a-f]{64}$'", name="content_sha256_hex"),
        # One object per document; the orphan sweep looks objects up by key.
        Index(
            "uq_documents_tenant_content_object_key",
            "tenant_id",
            "content_object_key",
            unique=True,
            postgresql_where=text("content_object_key IS NOT NULL"),
        ),
        Index(
            "idx_documents_tenant_created",
            "tenant_id",
            text("created_at DESC"),
            text("id DESC"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("idx_documents_tenant_user", "tenant_id", "user_id"),
        Index(
            "idx_documents_tenant_status",
            "tenant_id",
            "status",
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("idx_documents_metadata_gin", "metadata", postgresql_using="gin"),
        # The rows vector search may return, per tenant (see app/database/vector_search.py).
        # Large tenants also get an HNSW index of their own, built by the maintenance command
        # (app/services/vector_indexes.py), not by migrations: they are not in the model.
        Index(
            "idx_documents_tenant_embedded",
            "tenant_id",
            postgresql_where=text("embedding_vector IS NOT NULL AND deleted_at IS NULL"),
        ),
        {"comment": "Documents stored in S3, with metadata and a 1024-dim embedding."},
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"),
        primary_key=True,
        comment="Owning tenant (RLS key).",
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        comment="Uploader; references users(tenant_id, id) so it is always a same-tenant user."
    )
    s3_key: Mapped[str] = mapped_column(String(1024), comment="Object key in the S3 bucket.")
    s3_bucket: Mapped[str] = mapped_column(String(255), comment="S3 bucket holding the object.")
    filename: Mapped[str] = mapped_column(String(255), comment="Original file name (may be PHI).")
    content_type: Mapped[str] = mapped_column(String(255), comment="MIME type of the file.")
    size_bytes: Mapped[int] = mapped_column(BigInteger, comment="Size of the file in bytes.")
    status: Mapped[str] = mapped_column(
        String(50),
        server_default=text("'processing'"),
        comment="Processing status: processing, completed or failed.",
    )
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata",
        JSONB,
        server_default=text("'{}'::jsonb"),
        comment="Free-form JSON metadata (GIN-indexed for containment queries).",
    )
    # The stored content (docs/ENCRYPTION.md): NULL until uploaded, then all set together.
    # Added by a later migration, after the inherited columns (`column_added_later`).
    content_object_key: Mapped[str | None] = column_added_later(
        String(1024),
        comment="Key of the encrypted content in the platform's bucket; NULL until uploaded.",
    )
    content_wrapped_key: Mapped[bytes | None] = column_added_later(
        LargeBinary,
        comment="The content's data key, wrapped by the tenant key (never the plain key).",
    )
    content_key_ref: Mapped[str | None] = column_added_later(
        String(2048),
        comment="The tenant key that wrapped the data key (tenants.kms_key_arn then).",
    )
    content_key_version: Mapped[int | None] = column_added_later(
        Integer,
        comment="Version of the tenant key that wrapped it (NULL when the KMS hides it).",
    )
    content_sha256: Mapped[str | None] = column_added_later(
        String(64),
        comment="SHA-256 of the plaintext content, lowercase hex (also the ETag).",
    )
    content_uploaded_at: Mapped[datetime | None] = column_added_later(
        comment="When the content was stored (Last-Modified of a download).",
    )
    # What ingestion made of the content (app/services/ingest.py); after the content columns.
    status_reason: Mapped[str | None] = column_added_later(
        String(1000),
        comment="Why the status is what it is (a failure's reason, a truncation); no content.",
    )
    chunk_count: Mapped[int | None] = column_added_later(
        Integer,
        comment="Searchable chunks made of the content; NULL until processed.",
    )
    # Deferred: a 1024-float vector is loaded only when asked for (search needs only distances,
    # listings only whether there is one).
    embedding_vector: Mapped[Any | None] = mapped_column(
        Vector(EMBEDDING_DIMENSIONS),
        deferred=True,
        comment="Embedding (1024 dims, cosine distance).",
    )
    # Not expired by a flush: services that change the embedding set it themselves.
    has_embedding: Mapped[bool] = column_property(
        embedding_vector.column.is_not(None),  # type: ignore[attr-defined]
        expire_on_flush=False,
    )

    tenant: Mapped[Tenant] = relationship(back_populates="documents", lazy="raise")
    user: Mapped[User] = relationship(
        back_populates="documents",
        lazy="raise",
        primaryjoin="and_(User.tenant_id == foreign(Document.tenant_id),"
        " User.id == foreign(Document.user_id))",
        overlaps="documents,tenant",
    )

    @classmethod
    async def similarity_search(
        cls,
        session: AsyncSession,
        embedding: Any,
        k: int = 10,
        filters: SearchFilters | None = None,
        *,
        tenant_id: uuid.UUID | None = None,
    ) -> list[SearchHit]:
        """The current tenant's `k` nearest active documents by cosine distance, nearest first.

        Runs in the session's transaction, under its tenant context; raises ValueError for an
        embedding that is not 1024 finite numbers or a `k` outside 1..100. `tenant_id` (the
        context's tenant) adds the explicit filter that routes the query to one Citus shard.
        """
        return await vector_search.similarity_search(
            cls, session, embedding, k, filters, tenant_id=tenant_id
        )

    def __repr__(self) -> str:
        return f"<Document id={self.id} tenant_id={self.tenant_id} status={self.status}>"
