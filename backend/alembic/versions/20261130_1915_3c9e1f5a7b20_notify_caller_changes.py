"""Tell every app process when a tenant or user row changes: NOTIFY caller_changes, numbered.

The request path caches who a token's caller is (app/services/caller_cache.py, issue 20). A
cache may only skip the caller lookup while it hears of every change that could refuse the
caller, at once: these triggers send `<tenant id>:<number>` on the `caller_changes` channel
when a tenant or user row changes or goes, delivered to every listening process when the
changing transaction commits (never for a rolled-back change). The numbers come from
`caller_change_seq` in commit order; a request reads the sequence in its first round trip and
uses the cache only if its listener has heard that number (so a change committed before the
request began is never missed, however late its notification is delivered).

Generic on purpose: any change to a tenant row (status, deleted_at, or a lifecycle column a
later migration adds, e.g. issue 18's offboarding state) and any change to a user row except
its sign-in stamps (`last_login_at`, `updated_at`, written at most once a minute per user by
the request path itself) notifies, so a new column that affects access needs no change here.

Revision ID: 3c9e1f5a7b20
Revises: d4a8c3e1f927
Create Date: 2026-11-30 19:15:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "3c9e1f5a7b20"
down_revision: str | None = "d4a8c3e1f927"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "caller_changes"
SEQUENCE = "caller_change_seq"

# A deferred constraint trigger runs at COMMIT, after the transaction's own statements. The
# advisory lock (held until the transaction ends) makes the numbers follow commit order, so a
# listener that has heard number N has heard every change numbered below N that committed.
# NOTIFY is transactional: sent at COMMIT, dropped on ROLLBACK. SECURITY DEFINER: nextval on
# the owner's sequence whoever changes the row (app_admin, app_runtime or the migrator).
NOTIFY_FUNCTION = f"""
CREATE FUNCTION notify_caller_change() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('{CHANNEL}'));
    -- Separate branches: PL/pgSQL resolves OLD.tenant_id only where it runs (not on tenants).
    IF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('{CHANNEL}', OLD.id::text || ':' || nextval('public.{SEQUENCE}'));
    ELSE
        PERFORM pg_notify(
            '{CHANNEL}', OLD.tenant_id::text || ':' || nextval('public.{SEQUENCE}'));
        IF TG_OP = 'UPDATE' AND NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
            PERFORM pg_notify(
                '{CHANNEL}', NEW.tenant_id::text || ':' || nextval('public.{SEQUENCE}'));
        END IF;
    END IF;
    RETURN NULL;
END
$$
"""

# A listener's own mark: "sync:<number>" arrives after every change that committed before it
# was sent, so the listener knows it has caught up (at start, and on every heartbeat).
SYNC_FUNCTION = f"""
CREATE FUNCTION caller_changes_sync() RETURNS void
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_advisory_xact_lock(hashtext('{CHANNEL}'));
    SELECT pg_notify('{CHANNEL}', 'sync:' || nextval('public.{SEQUENCE}'));
$$
"""

# Every column but the sign-in stamps (the request path writes those itself).
USER_ROW_CHANGED = (
    "(to_jsonb(OLD) - '{last_login_at,updated_at}'::text[])"
    " IS DISTINCT FROM (to_jsonb(NEW) - '{last_login_at,updated_at}'::text[])"
)
AT_COMMIT = "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"


def upgrade() -> None:
    op.execute(f"CREATE SEQUENCE {SEQUENCE}")
    # Requests read last_value in their first round trip (app.database.tenant_context).
    op.execute(f"GRANT SELECT ON SEQUENCE {SEQUENCE} TO app_runtime, app_admin")
    op.execute(NOTIFY_FUNCTION)
    op.execute(SYNC_FUNCTION)
    op.execute("REVOKE ALL ON FUNCTION notify_caller_change() FROM PUBLIC")
    op.execute("REVOKE ALL ON FUNCTION caller_changes_sync() FROM PUBLIC")
    op.execute("GRANT EXECUTE ON FUNCTION caller_changes_sync() TO app_runtime")
    op.execute(
        "CREATE CONSTRAINT TRIGGER notify_caller_change AFTER UPDATE OR DELETE ON tenants "
        f"{AT_COMMIT} EXECUTE FUNCTION notify_caller_change()"
    )
    op.execute(
        "CREATE CONSTRAINT TRIGGER notify_caller_change AFTER DELETE ON users "
        f"{AT_COMMIT} EXECUTE FUNCTION notify_caller_change()"
    )
    op.execute(
        "CREATE CONSTRAINT TRIGGER notify_caller_change_update AFTER UPDATE ON users "
        f"{AT_COMMIT} WHEN ({USER_ROW_CHANGED}) EXECUTE FUNCTION notify_caller_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER notify_caller_change_update ON users")
    op.execute("DROP TRIGGER notify_caller_change ON users")
    op.execute("DROP TRIGGER notify_caller_change ON tenants")
    op.execute("DROP FUNCTION caller_changes_sync()")
    op.execute("DROP FUNCTION notify_caller_change()")
    op.execute(f"DROP SEQUENCE {SEQUENCE}")
