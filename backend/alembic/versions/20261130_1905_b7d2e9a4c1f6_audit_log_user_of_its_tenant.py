"""Audit rows may name only a user of their own tenant, checked as each row is written.

Migration 7a3e9b2c1d48 dropped the audit log's foreign key to users, because offboarding and
the retention purge erase users while the append-only trail keeps their bare ids. That also
dropped the database's own refusal of an audit row naming another tenant's user. This puts it
back where it belongs, at insert time only: a `BEFORE INSERT` trigger refuses, with the
foreign key's SQLSTATE 23503, name, message and detail (one for a foreign and a made-up id
alike), a row whose
`user_id` is not a user of the row's tenant. Erasing a user later leaves its audit rows alone.
`app_admin` is exempt: the restore of a tenant from its export replays audit rows that name
users a retention purge erased before the export.

Revision ID: b7d2e9a4c1f6
Revises: 3c9e4b7a2f10
Create Date: 2026-11-30 19:05:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "b7d2e9a4c1f6"
down_revision: str | None = "3c9e4b7a2f10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE FUNCTION audit_log_user_of_tenant() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Under RLS the caller sees only its own tenant's users: the guard trigger has already
    -- checked that NEW.tenant_id is the transaction's tenant.
    IF NOT EXISTS (
        SELECT 1 FROM public.users WHERE tenant_id = NEW.tenant_id AND id = NEW.user_id
    ) THEN
        -- Word for word what the dropped foreign key said, so callers see no change.
        RAISE USING
            MESSAGE = 'insert or update on table "audit_logs" violates foreign key constraint '
                      || '"fk_audit_logs_tenant_id_user_id_users"',
            ERRCODE = 'foreign_key_violation',
            CONSTRAINT = 'fk_audit_logs_tenant_id_user_id_users',
            TABLE = 'audit_logs',
            DETAIL = 'Key is not present in table "users".';
    END IF;
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(FUNCTION)
    # Name order puts it after zz_audit_log_tenant_guard and before zz_chain_audit_log.
    op.execute(
        "CREATE TRIGGER zz_audit_log_user_of_tenant BEFORE INSERT ON audit_logs FOR EACH ROW"
        " WHEN (NEW.user_id IS NOT NULL AND current_user <> 'app_admin')"
        " EXECUTE FUNCTION audit_log_user_of_tenant()"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP TRIGGER zz_audit_log_user_of_tenant ON audit_logs")
    op.execute("DROP FUNCTION audit_log_user_of_tenant()")
