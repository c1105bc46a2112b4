"""documents: primary key (tenant_id, id), the rule Citus sets for a table distributed by tenant.

Issue 22 (docs/SCALING.md). The API's ids do not change; the ORM still identifies a document
by `id` alone.

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


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("pk_documents", "documents", type_="primary")
    op.create_primary_key("pk_documents", "documents", ["tenant_id", "id"])


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("pk_documents", "documents", type_="primary")
    op.create_primary_key("pk_documents", "documents", ["id"])
