"""Enable and FORCE Row-Level Security on every tenant table, with policies bound to app_runtime.

Each policy reads the transaction's `app.current_tenant_id` through a scalar subquery, so the
setting is evaluated once per statement (an InitPlan), not once per row. A missing or empty
setting yields NULL, which matches no row: no context means no rows, never all rows. Every
policy that admits writes has a WITH CHECK, so no row can be written into another tenant.
Policies name `app_runtime`: the table owner and the migration login match no policy and,
with FORCE, see nothing either; the provisioning role `app_admin` has BYPASSRLS.

Revision ID: f6a7b8c9d0e1
Revises: e5f6a7b8c9d0
Create Date: 2025-10-16 14:25:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "f6a7b8c9d0e1"
down_revision: str | None = "e5f6a7b8c9d0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "(SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)"

# (table, policy, command, column holding the tenant id)
POLICIES = [
    ("tenants", "tenant_isolation_policy", "ALL", "id"),
    ("users", "user_isolation_policy", "ALL", "tenant_id"),
    ("documents", "document_isolation_policy", "ALL", "tenant_id"),
    ("audit_logs", "audit_log_select_policy", "SELECT", "tenant_id"),
    ("audit_logs", "audit_log_insert_policy", "INSERT", "tenant_id"),
]
TABLES = ["tenants", "users", "documents", "audit_logs"]


def _clauses(command: str, column: str) -> str:
    predicate = f"({column} = {CURRENT_TENANT})"
    if command == "SELECT":
        return f"USING {predicate}"
    if command == "INSERT":
        return f"WITH CHECK {predicate}"
    return f"USING {predicate} WITH CHECK {predicate}"


def upgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    for table, policy, command, column in POLICIES:
        op.execute(
            f"CREATE POLICY {policy} ON {table} AS PERMISSIVE FOR {command} TO app_runtime "
            f"{_clauses(command, column)}"
        )


def downgrade() -> None:
    for table, policy, _command, _column in POLICIES:
        op.execute(f"DROP POLICY {policy} ON {table}")
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
