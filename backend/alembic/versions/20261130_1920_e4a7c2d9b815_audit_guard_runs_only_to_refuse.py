"""The audit tenant guard's function runs only for a row it refuses (a WHEN clause).

`zz_audit_log_tenant_guard` (93494aa1d1dd) called its PL/pgSQL function for every audit row,
to raise RLS's own error for a row RLS would refuse before the chain trigger locks a head.
Every call of a function with a `SET search_path` clause saves and restores the setting, and
the path is looked up again afterwards: for a row the guard lets through, that was pure
overhead on every audit insert (issue 20; docs/AUDIT_INTEGRITY.md, "Cost"). The trigger now
asks the same question in its WHEN clause, evaluated by the executor as the inserting role (so
`row_security_active` still answers for the caller), and calls the function, unchanged, only
to raise. The condition is the function's own: no context and a caller subject to RLS, or a
context naming another tenant than the row's.

Revision ID: e4a7c2d9b815
Revises: 3c9e1f5a7b20
Create Date: 2026-11-30 19:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "e4a7c2d9b815"
down_revision: str | None = "3c9e1f5a7b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONTEXT = "NULLIF(current_setting('app.current_tenant_id', true), '')"
REFUSED = (
    f"CASE WHEN {CONTEXT} IS NULL THEN row_security_active('public.audit_logs')"
    f" ELSE NEW.tenant_id IS DISTINCT FROM {CONTEXT}::uuid END"
)


def _guard(when: str) -> str:
    return (
        "CREATE TRIGGER zz_audit_log_tenant_guard BEFORE INSERT ON audit_logs "
        f"FOR EACH ROW {when}EXECUTE FUNCTION guard_audit_log_tenant()"
    )


def upgrade() -> None:
    op.execute("DROP TRIGGER zz_audit_log_tenant_guard ON audit_logs")
    op.execute(_guard(f"WHEN ({REFUSED}) "))


def downgrade() -> None:
    op.execute("DROP TRIGGER zz_audit_log_tenant_guard ON audit_logs")
    op.execute(_guard(""))
