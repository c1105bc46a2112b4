"""Writes aimed at another tenant: refused by WITH CHECK, privileges, or simply find no row."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import tenant_transaction
from tests.test_security.conftest import (
    TwoTenants,
    admin_scalar,
    message_shape,
    refused,
    sqlstate,
)

_DOCUMENT_VALUES = (
    "'k', 'b', 'planted.pdf', 'application/pdf', 1"  # s3_key, s3_bucket, filename, type, size
)
_INSERT_DOCUMENT = (
    "INSERT INTO documents (tenant_id, user_id, s3_key, s3_bucket, filename, content_type,"
    f" size_bytes) VALUES (:tenant_id, :user_id, {_DOCUMENT_VALUES})"
)
_DOCUMENT_FILENAME = "SELECT filename FROM documents WHERE id = :id"


def _assert_row_level_security_refusal(error: DBAPIError, table: str) -> None:
    assert sqlstate(error) == "42501"
    assert f'new row violates row-level security policy for table "{table}"' in str(error.orig)


async def test_insert_with_other_tenants_tenant_id_refused_by_with_check(
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    tenants: TwoTenants,
) -> None:
    """Tenant a plants a document in b (with b's real user, so only WITH CHECK can stop it)."""
    error = await refused(
        runtime_sessions,
        tenants.a.tenant_id,
        _INSERT_DOCUMENT,
        {"tenant_id": tenants.b.tenant_id, "user_id": tenants.b.user_id},
    )
    _assert_row_level_security_refusal(error, "documents")
    user_error = await refused(
        runtime_sessions,
        tenants.a.tenant_id,
        "INSERT INTO users (tenant_id, email) VALUES (:tenant_id, 'planted@x.org')",
        {"tenant_id": tenants.b.tenant_id},
    )
    _assert_row_level_security_refusal(user_error, "users")
    audit_error = await refused(
        runtime_sessions,
        tenants.a.tenant_id,
        "INSERT INTO audit_logs (tenant_id, action, resource_type)"
        " VALUES (:tenant_id, 'forged.event', 'document')",
        {"tenant_id": tenants.b.tenant_id},
    )
    _assert_row_level_security_refusal(audit_error, "audit_logs")
    stored = await admin_scalar(
        admin_sessions,
        "SELECT count(*) FROM documents WHERE tenant_id = :tenant_id",
        {"tenant_id": tenants.b.tenant_id},
    )
    assert stored == 1


async def test_insert_with_other_tenants_tenant_id_through_cte_refused_by_with_check(
    runtime_sessions: async_sessionmaker[AsyncSession], tenants: TwoTenants
) -> None:
    """The same plant hidden in a data-modifying CTE is checked just the same."""
    error = await refused(
        runtime_sessions,
        tenants.a.tenant_id,
        f"WITH planted AS ({_INSERT_DOCUMENT} RETURNING *) SELECT id FROM planted",
        {"tenant_id": tenants.b.tenant_id, "user_id": tenants.b.user_id},
    )
    _assert_row_level_security_refusal(error, "documents")


async def test_update_moving_own_row_to_other_tenant_refused(
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    tenants: TwoTenants,
) -> None:
    """UPDATE … SET tenant_id = b, directly or in a CTE: app_runtime may not write tenant_id."""
    params = {"tenant_id": tenants.b.tenant_id, "user_id": tenants.b.user_id}
    direct = (
        "UPDATE documents SET tenant_id = :tenant_id, user_id = :user_id"
        f" WHERE id = '{tenants.a.document_id}'"
    )
    for statement in (direct, f"WITH u AS ({direct} RETURNING *) SELECT * FROM u"):
        error = await refused(runtime_sessions, tenants.a.tenant_id, statement, params)
        assert sqlstate(error) == "42501"
        assert "permission denied for table documents" in str(error.orig)
    owner = await admin_scalar(
        admin_sessions,
        "SELECT tenant_id FROM documents WHERE id = :id",
        {"id": tenants.a.document_id},
    )
    assert owner == tenants.a.tenant_id


def test_update_to_other_tenant_refused_by_with_check_even_with_column_privilege(
    superuser: psycopg.Connection[Any], tenants: TwoTenants
) -> None:
    """Second layer: were UPDATE(tenant_id) ever granted, WITH CHECK would still refuse the move.

    A superuser grants the column privilege inside one transaction, switches to app_runtime
    (policies bind current_user) and tries the move; everything is rolled back afterwards.
    """
    direct = "UPDATE documents SET tenant_id = %(tenant)s, user_id = %(user)s WHERE id = %(id)s"
    params = {"tenant": tenants.b.tenant_id, "user": tenants.b.user_id, "id": tenants.a.document_id}
    for statement in (direct, f"WITH u AS ({direct} RETURNING *) SELECT * FROM u"):
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege) as caught,
            superuser.transaction(),
        ):
            superuser.execute("GRANT UPDATE (tenant_id, user_id) ON documents TO app_runtime")
            superuser.execute("SET LOCAL ROLE app_runtime")
            superuser.execute(
                "SELECT set_config('app.current_tenant_id', %s, true)",
                (str(tenants.a.tenant_id),),
            )
            superuser.execute(statement, params)
        assert 'new row violates row-level security policy for table "documents"' in str(
            caught.value
        )
    still_granted = superuser.execute(
        "SELECT has_column_privilege('app_runtime', 'documents', 'tenant_id', 'UPDATE')"
    ).fetchone()
    assert still_granted == (False,)


@pytest.mark.parametrize(
    ("table", "assignment"),
    [
        ("documents", "filename = 'overwritten.pdf'"),
        ("documents", "deleted_at = now()"),
        ("users", "full_name = 'overwritten'"),
        ("users", "deleted_at = now()"),
    ],
)
async def test_update_or_soft_delete_of_other_tenants_row_by_id_affects_nothing(
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    tenants: TwoTenants,
    table: str,
    assignment: str,
) -> None:
    """Aimed at b's id, directly or through a CTE: 0 rows, RETURNING empty, b's row unchanged."""
    victim = tenants.b.document_id if table == "documents" else tenants.b.user_id
    direct = f"UPDATE {table} SET {assignment} WHERE id = :id RETURNING id"
    async with tenant_transaction(runtime_sessions, tenants.a.tenant_id) as session:
        result = await session.execute(text(direct), {"id": victim})
        assert result.rowcount == 0
        assert result.all() == []
        through_cte = await session.execute(
            text(f"WITH u AS ({direct}) SELECT * FROM u"), {"id": victim}
        )
        assert through_cte.all() == []
    unchanged = await admin_scalar(
        admin_sessions,
        f"SELECT updated_at = created_at AND deleted_at IS NULL FROM {table} WHERE id = :id",
        {"id": victim},
    )
    assert unchanged is True


async def test_insert_on_conflict_do_update_aimed_at_other_tenants_id_refused_without_oracle(
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    tenants: TwoTenants,
) -> None:
    """An upsert on b's document id is refused exactly as one on a random id: no update, no hint.

    Ids are server-generated and app_runtime may not supply them at all (column privileges),
    so neither the RLS error of ON CONFLICT nor a unique violation can reveal that an id exists.
    """
    insert = (
        "INSERT INTO documents (id, tenant_id, user_id, s3_key, s3_bucket, filename,"
        f" content_type, size_bytes) VALUES (:id, :tenant_id, :user_id, {_DOCUMENT_VALUES})"
    )
    # The conflict target is the table's key, (tenant_id, id) (Citus's rule, docs/SCALING.md).
    attempts = (
        f"{insert} ON CONFLICT (tenant_id, id) DO UPDATE SET filename = 'hijacked.pdf'"
        " RETURNING id",
        f"{insert} ON CONFLICT (tenant_id, id) DO NOTHING RETURNING id",
        f"{insert} RETURNING id",
    )
    own = {"tenant_id": tenants.a.tenant_id, "user_id": tenants.a.user_id}
    errors = []
    for target in (tenants.b.document_id, uuid.uuid4()):
        for statement in attempts:
            error = await refused(
                runtime_sessions, tenants.a.tenant_id, statement, {"id": target, **own}
            )
            errors.append((sqlstate(error), message_shape(error)))
    assert len(set(errors)) == 1, errors
    assert errors[0][0] == "42501"
    filename = await admin_scalar(admin_sessions, _DOCUMENT_FILENAME, {"id": tenants.b.document_id})
    assert filename == tenants.b.filename


@pytest.mark.parametrize(
    "statement",
    [
        _INSERT_DOCUMENT,
        "INSERT INTO audit_logs (tenant_id, user_id, action, resource_type)"
        " VALUES (:tenant_id, :user_id, 'document.read', 'document')",
    ],
    ids=["document", "audit_log"],
)
async def test_row_pointing_at_other_tenants_user_refused_like_random_id(
    runtime_sessions: async_sessionmaker[AsyncSession], tenants: TwoTenants, statement: str
) -> None:
    """b's user id in a's row fails the composite FK exactly as a made-up id does."""
    errors = []
    for user_id in (tenants.b.user_id, uuid.uuid4()):
        error = await refused(
            runtime_sessions,
            tenants.a.tenant_id,
            statement,
            {"tenant_id": tenants.a.tenant_id, "user_id": user_id},
        )
        errors.append((sqlstate(error), message_shape(error)))
    assert errors[0] == errors[1]
    assert errors[0][0] == "23503"  # foreign_key_violation
