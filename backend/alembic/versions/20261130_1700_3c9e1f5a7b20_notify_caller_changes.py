"""Tell every app process when a tenant or user row changes: pg_notify('caller_changes', tenant).

The request path caches who a token's caller is (app/services/caller_cache.py, issue 20). A
cache may only skip the caller lookup while it hears of every change that could refuse the
caller, at once: these triggers send the tenant's id on the `caller_changes` channel when a
tenant or user row changes or goes, delivered to every listening process when the changing
transaction commits (never for a rolled-back change).

Generic on purpose: any change to a tenant row (status, deleted_at, or a lifecycle column a
later migration adds, e.g. issue 18's offboarding state) and any change to a user row except
its sign-in stamps (`last_login_at`, `updated_at`, written at most once a minute per user by
the request path itself) notifies, so a new column that affects access needs no change here.

Revision ID: 3c9e1f5a7b20
Revises: 8b61c0d4e2f5
Create Date: 2026-11-30 17:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "3c9e1f5a7b20"
down_revision: str | None = "8b61c0d4e2f5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "caller_changes"

# AFTER … FOR EACH ROW: runs as whoever changes the row (pg_notify needs no privilege). NOTIFY
# is transactional: queued now, sent at COMMIT, dropped on ROLLBACK; identical payloads of one
# transaction are sent once.
NOTIFY_FUNCTION = f"""
CREATE FUNCTION notify_caller_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('{CHANNEL}', OLD.id::text);
    ELSE
        PERFORM pg_notify('{CHANNEL}', OLD.tenant_id::text);
        IF TG_OP = 'UPDATE' AND NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
            PERFORM pg_notify('{CHANNEL}', NEW.tenant_id::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$
"""

# Every column but the sign-in stamps (the request path writes those itself).
USER_ROW_CHANGED = (
    "(to_jsonb(OLD) - '{last_login_at,updated_at}'::text[])"
    " IS DISTINCT FROM (to_jsonb(NEW) - '{last_login_at,updated_at}'::text[])"
)


def upgrade() -> None:
    op.execute(NOTIFY_FUNCTION)
    op.execute("REVOKE ALL ON FUNCTION notify_caller_change() FROM PUBLIC")
    op.execute(
        "CREATE TRIGGER notify_caller_change AFTER UPDATE OR DELETE ON tenants "
        "FOR EACH ROW EXECUTE FUNCTION notify_caller_change()"
    )
    op.execute(
        "CREATE TRIGGER notify_caller_change AFTER DELETE ON users "
        "FOR EACH ROW EXECUTE FUNCTION notify_caller_change()"
    )
    op.execute(
        "CREATE TRIGGER notify_caller_change_update AFTER UPDATE ON users "
        f"FOR EACH ROW WHEN ({USER_ROW_CHANGED}) EXECUTE FUNCTION notify_caller_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER notify_caller_change_update ON users")
    op.execute("DROP TRIGGER notify_caller_change ON users")
    op.execute("DROP TRIGGER notify_caller_change ON tenants")
    op.execute("DROP FUNCTION notify_caller_change()")
