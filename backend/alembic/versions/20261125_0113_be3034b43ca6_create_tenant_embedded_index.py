"""Index each tenant's active, embedded documents, for the exact-scan path of vector search.

`Document.similarity_search` counts a tenant's searchable rows (bounded: LIMIT threshold + 1)
to choose between an exact scan and the HNSW index, and the exact scan reads exactly those
rows. This partial index holds only them, so the count is an index-only scan and the exact
scan touches no deleted or not-yet-embedded row.

Revision ID: be3034b43ca6
Revises: a7b8c9d0e1f2
Create Date: 2026-11-25 01:13:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "be3034b43ca6"
down_revision: str | None = "a7b8c9d0e1f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "idx_documents_tenant_embedded",
        "documents",
        ["tenant_id"],
        postgresql_where=sa.text("embedding_vector IS NOT NULL AND deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("idx_documents_tenant_embedded", table_name="documents")
