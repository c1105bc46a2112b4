"""audit_logs is append-only: privileges stop app_runtime, triggers stop everyone else."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from testkit import database_harness as harness
from tests.conftest import MigratedDatabase
from tests.test_security.conftest import TwoTenants, admin_scalar, refused, sqlstate

_APPEND_ONLY = "audit_logs is append-only"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_logs SET action = 'forged' WHERE id = :own",
        "DELETE FROM audit_logs WHERE id = :own",
        "TRUNCATE audit_logs",
        "WITH gone AS (DELETE FROM audit_logs WHERE id = :own RETURNING *) SELECT * FROM gone",
    ],
    ids=["update", "delete", "truncate", "delete-in-cte"],
)
async def test_runtime_role_cannot_change_audit_logs(
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    tenants: TwoTenants,
    statement: str,
) -> None:
    """Even its own tenant's audit rows: app_runtime has no UPDATE, DELETE or TRUNCATE privilege."""
    error = await refused(
        runtime_sessions, tenants.a.tenant_id, statement, {"own": tenants.a.audit_id}
    )
    assert sqlstate(error) == "42501"
    assert "permission denied for table audit_logs" in str(error.orig)
    action = await admin_scalar(
        admin_sessions, "SELECT action FROM audit_logs WHERE id = :id", {"id": tenants.a.audit_id}
    )
    assert action == "document.create"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_logs SET action = 'forged' WHERE id = %(id)s",
        "DELETE FROM audit_logs WHERE id = %(id)s",
    ],
    ids=["update", "delete"],
)
def test_triggers_refuse_changing_a_visible_audit_row(
    superuser: psycopg.Connection[Any], tenants: TwoTenants, statement: str
) -> None:
    """A superuser sees the row and holds every privilege; only the trigger stops the change."""
    with pytest.raises(errors.InsufficientPrivilege, match=_APPEND_ONLY):
        superuser.execute(statement, {"id": tenants.b.audit_id})
    stored = superuser.execute(
        "SELECT action FROM audit_logs WHERE id = %s", (tenants.b.audit_id,)
    ).fetchone()
    assert stored == ("document.create",)


def test_owner_cannot_truncate_or_change_audit_logs(
    migrated_db: MigratedDatabase, superuser: psycopg.Connection[Any], tenants: TwoTenants
) -> None:
    """The owner may TRUNCATE by privilege, but the trigger refuses; UPDATE/DELETE see 0 rows."""
    with psycopg.connect(harness.libpq(migrated_db.owner_url), autocommit=True) as owner:
        with pytest.raises(errors.InsufficientPrivilege, match=_APPEND_ONLY):
            owner.execute("TRUNCATE audit_logs")
        # FORCE: the owner matches no policy, so there is no row for it to change.
        assert owner.execute("UPDATE audit_logs SET action = 'forged'").rowcount == 0
        assert owner.execute("DELETE FROM audit_logs").rowcount == 0
    remaining = superuser.execute(
        "SELECT count(*) FROM audit_logs WHERE id = ANY(%s)",
        ([tenants.a.audit_id, tenants.b.audit_id],),
    ).fetchone()
    assert remaining == (2,)


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE audit_logs DISABLE TRIGGER ALL",
        "ALTER TABLE audit_logs DISABLE TRIGGER prevent_audit_log_delete",
        "SET session_replication_role = replica",
        "SET LOCAL session_replication_role = replica",
        "SELECT set_config('session_replication_role', 'replica', true)",
        "DROP TRIGGER prevent_audit_log_delete ON audit_logs",
        "ALTER TABLE audit_logs NO FORCE ROW LEVEL SECURITY",
    ],
)
async def test_runtime_role_cannot_disable_audit_triggers(
    runtime_sessions: async_sessionmaker[AsyncSession], tenants: TwoTenants, statement: str
) -> None:
    """Switching the triggers off (directly or by replica mode) needs ownership or superuser."""
    error = await refused(runtime_sessions, tenants.a.tenant_id, statement)
    assert sqlstate(error) == "42501"
