"""Drop the HNSW index shared by every tenant: no search walks it any more (issue 16).

search_documents() (5d2e8f1a9c37) walks only a tenant's own partial HNSW index, built by the
maintenance command, or scans the tenant's rows exactly. The shared index cost every insert
or embedding update of every tenant a graph insertion into a graph of the whole table
(docs/VECTOR_SEARCH.md has the measured cost per insert), and its walks let other tenants'
vectors shape what a search found and how long it took.

The downgrade rebuilds it as c41f7a9e2b6d left it (m=16, ef_construction=128); that blocks
writes to documents while it builds (minutes per 100k rows on 2 cores).

Revision ID: 8b61c0d4e2f5
Revises: 5d2e8f1a9c37
Create Date: 2026-11-30 14:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "8b61c0d4e2f5"
down_revision: str | None = "5d2e8f1a9c37"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "idx_documents_embedding_hnsw"


def upgrade() -> None:
    op.drop_index(INDEX, table_name="documents")


def downgrade() -> None:
    op.create_index(
        INDEX,
        "documents",
        ["embedding_vector"],
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 128},
        postgresql_ops={"embedding_vector": "vector_cosine_ops"},
        postgresql_where=sa.text("embedding_vector IS NOT NULL AND deleted_at IS NULL"),
    )
