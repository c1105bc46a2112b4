"""Tenant offboarding state: two new statuses and the three moments of an offboarding (issue 18).

`offboarding`: access revoked (the caller lookup admits only `active` tenants), a grace period
runs until `offboard_after`, and the tenant may still be reactivated. `offboarded`: its key,
objects, documents and users are gone; the row stays as the tombstone the audit chain names.

Revision ID: 4f1c2a9d7e30
Revises: f351686354cb
Create Date: 2026-11-30 18:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "4f1c2a9d7e30"
down_revision: str | None = "f351686354cb"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUS_COMMENT = "Lifecycle status: active or suspended (suspended tenants cannot sign in)."
COLUMNS = {
    "offboard_scheduled_at": "When `offboard-tenant --schedule` revoked access (NULL: never).",
    "offboard_after": "End of the grace period: `--execute` is refused before it.",
    "offboarded_at": "When `offboard-tenant --execute` finished: the row is a tombstone.",
}


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for name, comment in COLUMNS.items():
        op.add_column(
            "tenants",
            sa.Column(name, postgresql.TIMESTAMP(timezone=True), nullable=True, comment=comment),
        )
    op.drop_constraint(op.f("ck_tenants_status"), "tenants", type_="check")
    op.create_check_constraint(
        op.f("ck_tenants_status"),
        "tenants",
        "status IN ('active', 'suspended', 'offboarding', 'offboarded')",
    )
    op.alter_column(
        "tenants",
        "status",
        existing_type=sa.String(50),
        existing_nullable=False,
        existing_server_default=sa.text("'active'"),
        comment="Lifecycle status: active, suspended, offboarding (access revoked, grace period)"
        " or offboarded (tombstone); only active tenants can sign in.",
        existing_comment=OLD_STATUS_COMMENT,
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.alter_column(
        "tenants",
        "status",
        existing_type=sa.String(50),
        existing_nullable=False,
        existing_server_default=sa.text("'active'"),
        comment=OLD_STATUS_COMMENT,
    )
    # Offboarding and offboarded tenants have no place in the old statuses: they stay
    # locked out as suspended.
    op.execute(
        "UPDATE tenants SET status = 'suspended' WHERE status IN ('offboarding', 'offboarded')"
    )
    op.drop_constraint(op.f("ck_tenants_status"), "tenants", type_="check")
    op.create_check_constraint(
        op.f("ck_tenants_status"), "tenants", "status IN ('active', 'suspended')"
    )
    for name in reversed(COLUMNS):
        op.drop_column("tenants", name)
