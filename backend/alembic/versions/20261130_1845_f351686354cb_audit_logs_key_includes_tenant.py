"""audit_logs: primary key (tenant_id, id), the rule Citus sets for a table distributed by tenant.

Issue 22 (docs/SCALING.md). The chain's own key, (tenant_id, chain_seq), already includes the
tenant, and so does its head table's (tenant_id). The API's ids do not change.

Revision ID: f351686354cb
Revises: 96f02aa3112f
Create Date: 2026-11-30 18:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "f351686354cb"
down_revision: str | None = "96f02aa3112f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("pk_audit_logs", "audit_logs", type_="primary")
    op.create_primary_key("pk_audit_logs", "audit_logs", ["tenant_id", "id"])


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("pk_audit_logs", "audit_logs", type_="primary")
    op.create_primary_key("pk_audit_logs", "audit_logs", ["id"])
