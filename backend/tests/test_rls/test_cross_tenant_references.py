"""Foreign keys can't point across tenants, nor reveal whether another tenant's id exists."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import AuditLog, Document
from testkit.database_harness import sqlstate
from testkit.factories import insert_row, provision_tenant

FOREIGN_KEY_VIOLATION = "23503"


def _document(tenant_id: uuid.UUID, user_id: uuid.UUID) -> Document:
    return Document(
        tenant_id=tenant_id,
        user_id=user_id,
        s3_bucket="b",
        s3_key="k",
        filename="f.pdf",
        content_type="application/pdf",
        size_bytes=1,
    )


def _audit(tenant_id: uuid.UUID, user_id: uuid.UUID) -> AuditLog:
    return AuditLog(tenant_id=tenant_id, user_id=user_id, action="x.y", resource_type="x")


@pytest.mark.parametrize("build", [_document, _audit], ids=["documents", "audit_logs"])
async def test_other_tenants_user_id_fails_exactly_like_a_random_id(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    build: object,
) -> None:
    mine = await provision_tenant(admin_sessions)
    theirs = await provision_tenant(admin_sessions)
    make = build  # a factory of the row to insert
    outcomes = {}
    for label, user_id in (("theirs", theirs.user_ids[0]), ("random", uuid.uuid4())):
        row = make(mine.tenant_id, user_id)  # type: ignore[operator]
        with pytest.raises(IntegrityError) as refused:
            await insert_row(runtime_sessions, mine.tenant_id, row)
        error = refused.value.orig
        assert error is not None
        diag = error.diag  # type: ignore[attr-defined]
        outcomes[label] = (
            type(error),
            sqlstate(refused.value),
            diag.constraint_name,
            diag.message_primary,
            (diag.message_detail or "").replace(str(user_id), "<user>"),
        )
    assert outcomes["theirs"] == outcomes["random"]
    _, code, constraint, _, detail = outcomes["theirs"]
    assert code == FOREIGN_KEY_VIOLATION
    assert constraint.endswith("_tenant_id_user_id_users")
    # PostgreSQL leaves the key values out of the detail when the referenced table has RLS.
    assert detail == 'Key is not present in table "users".'
