"""The provisioning role may hard-delete users and documents; audit rows outlive their users.

Offboarding and the retention purge (issue 18) remove documents and users for good, as
`app_admin` only: `app_runtime` still holds no DELETE anywhere. The audit log is append-only
and keeps naming the users who acted (a bare id, no PII: the row holding the email is what is
erased), so its foreign key to users, which would forbid erasing anyone who ever acted, goes.
The chain hashes `user_id` as text and never needed the referenced row.

The downgrade re-creates the foreign key NOT VALID: audit rows of already erased users would
make a validated one fail, and their history must not be rewritten to fit.

Revision ID: 7a3e9b2c1d48
Revises: 4f1c2a9d7e30
Create Date: 2026-11-30 18:55:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "7a3e9b2c1d48"
down_revision: str | None = "4f1c2a9d7e30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDIT_USER_FK = "fk_audit_logs_tenant_id_user_id_users"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("GRANT DELETE ON users, documents TO app_admin")
    op.drop_constraint(AUDIT_USER_FK, "audit_logs", type_="foreignkey")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        f"ALTER TABLE audit_logs ADD CONSTRAINT {AUDIT_USER_FK} FOREIGN KEY (tenant_id, user_id)"
        " REFERENCES users (tenant_id, id) ON DELETE RESTRICT NOT VALID"
    )
    op.execute("REVOKE DELETE ON users, documents FROM app_admin")
