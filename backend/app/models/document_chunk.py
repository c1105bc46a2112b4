"""DocumentChunk: one embedded piece of a document's text (the text itself encrypted)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.database.base import Base
from app.database.vector_search import EMBEDDING_DIMENSIONS


class DocumentChunk(Base):
    """A chunk of a document's extracted text: its span, its sealed text, its embedding.

    Soft-deleted with its document by a database trigger (`deleted_at` follows the
    document's); replaced as a whole when the document is processed again.
    """

    __tablename__ = "document_chunks"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "document_id"],
            ["documents.tenant_id", "documents.id"],
            name="fk_document_chunks_tenant_id_document_id_documents",
            ondelete="CASCADE",
        ),
        UniqueConstraint(
            "tenant_id", "document_id", "ordinal", name="uq_document_chunks_tenant_document_ordinal"
        ),
        CheckConstraint("ordinal >= 0", name="ordinal_non_negative"),
        CheckConstraint("start_char >= 0 AND end_char >= start_char", name="span"),
        # The rows a tenant's search may return; large tenants also get an HNSW index of their
        # own from the maintenance command (app/services/vector_indexes.py), not in the model.
        Index(
            "idx_document_chunks_tenant_searchable",
            "tenant_id",
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"),
        primary_key=True,
        comment="Owning tenant (RLS key).",
    )
    document_id: Mapped[uuid.UUID] = mapped_column(comment="The chunk's document.")
    ordinal: Mapped[int] = mapped_column(Integer, comment="Position in the document, 0-based.")
    start_char: Mapped[int] = mapped_column(
        Integer, comment="First character in the extracted text."
    )
    end_char: Mapped[int] = mapped_column(Integer, comment="One past the last character.")
    text_ciphertext: Mapped[bytes] = mapped_column(
        LargeBinary,
        deferred=True,
        comment="The chunk's text, AES-256-GCM under a key derived from the content's data key.",
    )
    embedding: Mapped[Any] = mapped_column(
        Vector(EMBEDDING_DIMENSIONS), deferred=True, comment="Embedding (1024 dims, cosine)."
    )
    embedding_provider: Mapped[str] = mapped_column(String(50), comment="local or bedrock.")
    embedding_model: Mapped[str] = mapped_column(String(200), comment="The model that embedded it.")
    embedding_dimensions: Mapped[int] = mapped_column(
        Integer,
        comment="The model's own dimension (384 mapped isometrically into 1024, or 1024).",
    )
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    def __repr__(self) -> str:
        return f"<DocumentChunk document_id={self.document_id} ordinal={self.ordinal}>"
