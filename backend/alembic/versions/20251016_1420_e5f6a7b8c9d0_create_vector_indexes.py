"""Create the HNSW index for cosine-distance search over active, embedded documents.

m=16 (graph degree) and ef_construction=64 (build-time candidate list) are pgvector's
defaults: a good recall/build-time balance for 1024-dim embeddings. The index is partial, so
soft-deleted and not-yet-embedded documents cost nothing in it.

Revision ID: e5f6a7b8c9d0
Revises: d4e5f6a7b8c9
Create Date: 2025-10-16 14:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "e5f6a7b8c9d0"
down_revision: str | None = "d4e5f6a7b8c9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "idx_documents_embedding_hnsw",
        "documents",
        ["embedding_vector"],
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding_vector": "vector_cosine_ops"},
        postgresql_where=sa.text("embedding_vector IS NOT NULL AND deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("idx_documents_embedding_hnsw", table_name="documents")
