"""documents: primary key (tenant_id, id), the rule Citus sets for a table distributed by tenant.

Issue 22 (docs/SCALING.md). The API's ids do not change; the ORM still identifies a document
by `id` alone. `uq_documents_tenant_id_id` (tenant_id, id) existed only so document_chunks could
point at a same-tenant document; the new primary key is that key, so the unique constraint
goes and the chunks' composite foreign key is re-created against the primary key.

Revision ID: 96f02aa3112f
Revises: 8bfcdb5aef94
Create Date: 2026-11-30 18:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "96f02aa3112f"
down_revision: str | None = "8bfcdb5aef94"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


CHUNKS_TO_DOCUMENT = "fk_document_chunks_tenant_id_document_id_documents"


def _create_chunks_to_document() -> None:
    op.create_foreign_key(
        CHUNKS_TO_DOCUMENT,
        "document_chunks",
        "documents",
        ["tenant_id", "document_id"],
        ["tenant_id", "id"],
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint(CHUNKS_TO_DOCUMENT, "document_chunks", type_="foreignkey")
    op.drop_constraint("pk_documents", "documents", type_="primary")
    op.drop_constraint("uq_documents_tenant_id_id", "documents", type_="unique")
    op.create_primary_key("pk_documents", "documents", ["tenant_id", "id"])
    _create_chunks_to_document()


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint(CHUNKS_TO_DOCUMENT, "document_chunks", type_="foreignkey")
    op.drop_constraint("pk_documents", "documents", type_="primary")
    op.create_primary_key("pk_documents", "documents", ["id"])
    op.create_unique_constraint("uq_documents_tenant_id_id", "documents", ["tenant_id", "id"])
    _create_chunks_to_document()
