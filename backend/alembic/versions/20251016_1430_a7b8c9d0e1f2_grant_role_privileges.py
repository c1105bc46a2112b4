"""Grant the runtime and provisioning roles exactly the privileges they need.

app_runtime: reads its tenant's row; reads and writes users and documents (UPDATE only of the
columns a request may change; no DELETE: rows are soft-deleted); appends to and reads
audit_logs; reads alembic_version for the readiness check. Nothing else: no DELETE, TRUNCATE,
REFERENCES or TRIGGER anywhere. app_admin (provisioning) may also create and change tenants.

INSERT is granted column by column, without `id`, `created_at` and `updated_at`: the database
generates them, so request code can neither back-date an audit row nor choose an id. Choosing
an id would be an oracle for other tenants' rows: a plain INSERT of an existing id fails with a
unique violation, and `ON CONFLICT (id)` reacts differently to an id that exists elsewhere.

Revision ID: a7b8c9d0e1f2
Revises: f6a7b8c9d0e1
Create Date: 2025-10-16 14:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "a7b8c9d0e1f2"
down_revision: str | None = "f6a7b8c9d0e1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNTIME_GRANTS = [
    "GRANT SELECT ON tenants TO app_runtime",
    "GRANT SELECT ON users TO app_runtime",
    "GRANT INSERT (tenant_id, email, external_idp_id, full_name, role, last_login_at, deleted_at) "
    "ON users TO app_runtime",
    "GRANT UPDATE (email, external_idp_id, full_name, role, last_login_at, deleted_at) "
    "ON users TO app_runtime",
    "GRANT SELECT ON documents TO app_runtime",
    "GRANT INSERT (tenant_id, user_id, s3_key, s3_bucket, filename, content_type, size_bytes, "
    "status, metadata, embedding_vector, deleted_at) ON documents TO app_runtime",
    "GRANT UPDATE (filename, content_type, size_bytes, status, metadata, embedding_vector, "
    "deleted_at) ON documents TO app_runtime",
    "GRANT SELECT ON audit_logs TO app_runtime",
    "GRANT INSERT (tenant_id, user_id, action, resource_type, resource_id, ip_address, "
    "user_agent, metadata) ON audit_logs TO app_runtime",
    "GRANT SELECT ON alembic_version TO app_runtime",
]
ADMIN_GRANTS = [
    "GRANT SELECT, INSERT, UPDATE ON tenants, users, documents TO app_admin",
    "GRANT SELECT, INSERT ON audit_logs TO app_admin",
    "GRANT SELECT ON alembic_version TO app_admin",
]
TABLES = "tenants, users, documents, audit_logs, alembic_version"


def upgrade() -> None:
    for statement in RUNTIME_GRANTS + ADMIN_GRANTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON {TABLES} FROM app_runtime, app_admin")
