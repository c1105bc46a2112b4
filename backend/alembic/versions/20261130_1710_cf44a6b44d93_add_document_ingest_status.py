"""Documents record what ingestion made of them: a failure reason and their chunk count.

Issue 19: the background pipeline sets `status` to `completed` (with `chunk_count`, 0 for a
document without text) or `failed` with `status_reason` (an unsupported type, a damaged PDF,
attempts exhausted), which the API shows. `(tenant_id, id)` becomes unique so that chunks can
point at their document with a same-tenant composite foreign key.

Revision ID: cf44a6b44d93
Revises: 3f9c2a7d5e14
Create Date: 2026-11-30 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "cf44a6b44d93"
down_revision: str | None = "3f9c2a7d5e14"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column(
        "documents",
        sa.Column(
            "status_reason",
            sa.String(1000),
            nullable=True,
            comment="Why the status is what it is (a failure's reason, a truncation); no content.",
        ),
    )
    op.add_column(
        "documents",
        sa.Column(
            "chunk_count",
            sa.Integer(),
            nullable=True,
            comment="Searchable chunks made of the content; NULL until processed.",
        ),
    )
    op.create_check_constraint(
        op.f("ck_documents_chunk_count_non_negative"), "documents", "chunk_count >= 0"
    )
    op.create_unique_constraint("uq_documents_tenant_id_id", "documents", ["tenant_id", "id"])
    # INSERT too: the ORM writes every mapped column of a new row (NULL here).
    op.execute(
        "GRANT INSERT (status_reason, chunk_count), UPDATE (status_reason, chunk_count)"
        " ON documents TO app_runtime"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        "REVOKE INSERT (status_reason, chunk_count), UPDATE (status_reason, chunk_count)"
        " ON documents FROM app_runtime"
    )
    op.drop_constraint("uq_documents_tenant_id_id", "documents", type_="unique")
    op.drop_constraint(op.f("ck_documents_chunk_count_non_negative"), "documents", type_="check")
    op.drop_column("documents", "chunk_count")
    op.drop_column("documents", "status_reason")
