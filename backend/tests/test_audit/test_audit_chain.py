"""The per-tenant hash chain is computed by the database at insert time and verifies.

Runs on the shared test database; nothing here breaks a chain (see test_audit_tamper.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from itertools import pairwise

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import admin_transaction, tenant_transaction
from app.models import AuditLog
from app.models.audit_log import audit_chain_heads
from app.services import audit_integrity as audit_integrity_service
from testkit.factories import make_tenant, make_user
from tests.test_audit.conftest import seed_chain

WRITERS = 8
ROWS_PER_WRITER = 6


async def _new_tenant(admin_sessions: async_sessionmaker[AsyncSession]) -> uuid.UUID:
    async with admin_transaction(admin_sessions) as session:
        return (await make_tenant(session)).id


async def _append(
    sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID, action: str = "doc.view"
) -> AuditLog:
    async with tenant_transaction(sessions, tenant_id) as session:
        return await AuditLog.create(
            session, tenant_id=tenant_id, action=action, resource_type="document"
        )


async def _append_with_lock_timeout(
    sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID, lock_timeout: str
) -> AuditLog:
    async with tenant_transaction(sessions, tenant_id) as session:
        await session.execute(text(f"SET LOCAL lock_timeout = '{lock_timeout}'"))
        return await AuditLog.create(
            session, tenant_id=tenant_id, action="doc.view", resource_type="document"
        )


class DeliberateRollbackError(Exception):
    """Raised inside a transaction to roll it back."""


async def _chain(
    sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID
) -> list[tuple[int, bytes, bytes]]:
    async with tenant_transaction(sessions, tenant_id) as session:
        result = await session.execute(
            select(AuditLog.chain_seq, AuditLog.prev_hash, AuditLog.row_hash)
            .where(AuditLog.tenant_id == tenant_id)
            .order_by(AuditLog.chain_seq)
        )
        return [(row.chain_seq, row.prev_hash, row.row_hash) for row in result]


async def test_first_row_starts_the_chain_and_each_row_links_to_the_previous(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await _new_tenant(admin_sessions)
    first = await _append(runtime_sessions, tenant_id)
    second = await _append(runtime_sessions, tenant_id)

    # The ORM reads the trigger's values back on insert.
    assert (first.chain_seq, first.prev_hash) == (1, bytes(32))
    assert (second.chain_seq, second.prev_hash) == (2, first.row_hash)
    assert len(first.row_hash) == 32
    assert first.row_hash != second.row_hash


async def test_python_encoding_matches_the_database_for_every_column_kind(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with admin_transaction(admin_sessions) as session:
        tenant = await make_tenant(session)
        user = await make_user(session, tenant)
    awkward = [
        {"ip_address": "2001:db8::1", "user_agent": "Mozilla/5.0 (X11; Linux) 12:3,4"},
        {"ip_address": "::ffff:192.0.2.1", "user_agent": 'line\nbreak, and "quotes"'},
        {"ip_address": None, "user_agent": None},
    ]
    for number, extra in enumerate(awkward):
        async with tenant_transaction(runtime_sessions, tenant.id) as session:
            await AuditLog.create(
                session,
                tenant_id=tenant.id,
                user_id=user.id if number else None,
                action="dossier.ändern",
                resource_type="document",
                resource_id=uuid.uuid4() if number != 1 else None,
                metadata={"zeta": 1.50, "ä": ["✓", None, {"b": True}], "a": "x,y:1"},
                **extra,
            )

    async with tenant_transaction(runtime_sessions, tenant.id) as session:
        report = await audit_integrity_service.verify_chain(session, tenant_id=tenant.id)

    assert report.ok, report.first_break
    assert report.tenants[0].row_count == len(awkward)


async def test_concurrent_writers_in_one_tenant_give_one_gap_free_chain(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await _new_tenant(admin_sessions)

    async def writer(number: int) -> None:
        for row in range(ROWS_PER_WRITER):
            await _append(runtime_sessions, tenant_id, action=f"writer{number}.row{row}")

    await asyncio.gather(*(writer(number) for number in range(WRITERS)))

    chain = await _chain(runtime_sessions, tenant_id)
    assert [seq for seq, _, _ in chain] == list(range(1, WRITERS * ROWS_PER_WRITER + 1))
    for (_, _, previous_hash), (_, prev_hash, _) in pairwise(chain):
        assert prev_hash == previous_hash
    async with tenant_transaction(runtime_sessions, tenant_id) as session:
        report = await audit_integrity_service.verify_chain(session, tenant_id=tenant_id)
    assert report.ok, report.first_break
    assert report.row_count == WRITERS * ROWS_PER_WRITER
    assert report.tenants[0].head_hash == chain[-1][2].hex()


async def test_a_rolled_back_insert_leaves_no_gap(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await _new_tenant(admin_sessions)
    await _append(runtime_sessions, tenant_id)

    seen_before_rollback: list[int] = []

    async def insert_then_roll_back() -> None:
        async with tenant_transaction(runtime_sessions, tenant_id) as session:
            rolled_back = await AuditLog.create(
                session, tenant_id=tenant_id, action="doc.view", resource_type="document"
            )
            seen_before_rollback.append(rolled_back.chain_seq)
            raise DeliberateRollbackError

    with pytest.raises(DeliberateRollbackError):
        await insert_then_roll_back()
    assert seen_before_rollback == [2]
    # A statement that fails inside the trigger's transaction rolls the head back too.
    with pytest.raises(DBAPIError):
        async with tenant_transaction(runtime_sessions, tenant_id) as session:
            await AuditLog.create(
                session,
                tenant_id=tenant_id,
                action="doc.view",
                # NOT NULL is checked after the BEFORE triggers (the chain trigger has run).
                # (The audit log's foreign key to users, used here before, was dropped: audit
                # rows outlive the users they name, docs/TENANT_LIFECYCLE.md.)
                resource_type=None,  # type: ignore[arg-type]
            )
    after = await _append(runtime_sessions, tenant_id)

    assert after.chain_seq == 2
    assert [seq for seq, _, _ in await _chain(runtime_sessions, tenant_id)] == [1, 2]


async def test_other_tenants_do_not_wait_while_one_tenant_is_serialised(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    busy_tenant = await _new_tenant(admin_sessions)
    other_tenant = await _new_tenant(admin_sessions)
    await _append(runtime_sessions, other_tenant)

    async with tenant_transaction(runtime_sessions, busy_tenant) as holding:
        # This transaction now holds busy_tenant's chain head until it ends.
        await AuditLog.create(
            holding, tenant_id=busy_tenant, action="doc.view", resource_type="document"
        )

        other = await _append_with_lock_timeout(runtime_sessions, other_tenant, "2s")
        assert other.chain_seq == 2

        # The same tenant's next writer does wait (and gives up at its lock timeout).
        with pytest.raises(OperationalError, match="lock timeout"):
            await _append_with_lock_timeout(runtime_sessions, busy_tenant, "200ms")

    assert [seq for seq, _, _ in await _chain(runtime_sessions, busy_tenant)] == [1]


_FORGED_INSERT = text(
    "INSERT INTO audit_logs (tenant_id, action, resource_type, chain_seq, prev_hash, row_hash)"
    " VALUES (:tenant, 'doc.view', 'document', 99, '\\x00'::bytea, sha256('forged'::bytea))"
    " RETURNING chain_seq, prev_hash, row_hash"
)


async def test_runtime_role_may_not_send_chain_values(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await _new_tenant(admin_sessions)
    # INSERT is granted to app_runtime column by column, without the chain columns.
    with pytest.raises(ProgrammingError, match="permission denied for table audit_logs"):
        async with tenant_transaction(runtime_sessions, tenant_id) as session:
            await session.execute(_FORGED_INSERT, {"tenant": tenant_id})

    assert await _chain(runtime_sessions, tenant_id) == []


async def test_chain_values_sent_by_a_role_allowed_to_send_them_are_overwritten(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await _new_tenant(admin_sessions)
    genuine = await _append(runtime_sessions, tenant_id)

    # app_admin holds INSERT on the whole table, chain columns included: the trigger wins.
    async with admin_transaction(admin_sessions) as session:
        forged = (await session.execute(_FORGED_INSERT, {"tenant": tenant_id})).one()

    assert forged.chain_seq == 2
    assert forged.prev_hash == genuine.row_hash
    assert forged.row_hash != hashlib.sha256(b"forged").digest()
    async with tenant_transaction(runtime_sessions, tenant_id) as session:
        assert (await audit_integrity_service.verify_chain(session, tenant_id=tenant_id)).ok


async def test_runtime_role_cannot_touch_the_chain_heads_or_rewrite_chain_columns(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id = await _new_tenant(admin_sessions)
    await _append(runtime_sessions, tenant_id)
    attempts = [
        "SELECT * FROM audit_chain_heads",
        "INSERT INTO audit_chain_heads VALUES (:tenant, 1, sha256('x'::bytea))",
        "UPDATE audit_chain_heads SET last_seq = 0 WHERE tenant_id = :tenant",
        "UPDATE audit_logs SET row_hash = sha256('x'::bytea) WHERE tenant_id = :tenant",
        "SELECT audit_log_row_hash(entry) FROM audit_logs entry",
    ]
    for statement in attempts:
        with pytest.raises(ProgrammingError, match="permission denied"):
            async with tenant_transaction(runtime_sessions, tenant_id) as session:
                await session.execute(text(statement), {"tenant": tenant_id})


def _assert_refused_like_rls(error: DBAPIError) -> None:
    """The refusal is RLS's own: SQLSTATE 42501 and its exact message, nothing more telling."""
    assert error.orig is not None
    assert error.orig.sqlstate == "42501"
    assert error.orig.diag.message_primary == (
        'new row violates row-level security policy for table "audit_logs"'
    )


async def _insert_while_victim_head_is_locked(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    victim: uuid.UUID,
    context_tenant: uuid.UUID | None,
) -> DBAPIError:
    """As app_runtime (in `context_tenant`, or with no context), append a row for `victim`."""

    async def append(session: AsyncSession) -> None:
        await session.execute(text("SET LOCAL lock_timeout = '2s'"))
        await AuditLog.create(
            session, tenant_id=victim, action="doc.view", resource_type="document"
        )

    async def append_for_victim() -> None:
        if context_tenant is None:
            async with runtime_sessions() as session, session.begin():
                await append(session)
        else:
            async with tenant_transaction(runtime_sessions, context_tenant) as session:
                await append(session)

    async with admin_transaction(admin_sessions) as holding:
        # Holds the victim's chain head until this block ends: a writer that reached the head
        # would wait and give up at its lock timeout rather than be refused.
        await AuditLog.create(
            holding, tenant_id=victim, action="doc.view", resource_type="document"
        )
        with pytest.raises(DBAPIError) as refused:
            await append_for_victim()
    return refused.value


async def test_an_insert_for_another_tenant_is_refused_like_rls_before_taking_its_head(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    own_tenant = await _new_tenant(admin_sessions)
    victim = await _new_tenant(admin_sessions)

    error = await _insert_while_victim_head_is_locked(
        admin_sessions, runtime_sessions, victim, context_tenant=own_tenant
    )

    _assert_refused_like_rls(error)  # not a lock timeout: refused before the head lock
    assert [seq for seq, _, _ in await _chain(runtime_sessions, victim)] == [1]
    assert await _chain(runtime_sessions, own_tenant) == []


async def test_an_insert_without_tenant_context_is_refused_like_rls_before_taking_a_head(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    victim = await _new_tenant(admin_sessions)

    error = await _insert_while_victim_head_is_locked(
        admin_sessions, runtime_sessions, victim, context_tenant=None
    )

    _assert_refused_like_rls(error)
    assert [seq for seq, _, _ in await _chain(runtime_sessions, victim)] == [1]


async def test_the_admin_role_without_context_appends_for_any_tenant(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    first = await _new_tenant(admin_sessions)
    second = await _new_tenant(admin_sessions)
    await _append(runtime_sessions, first)

    # The admin CLI's path: app_admin (BYPASSRLS), no tenant context, rows for several tenants.
    async with admin_transaction(admin_sessions) as session:
        for tenant_id in (first, second, first):
            await AuditLog.create(
                session, tenant_id=tenant_id, action="tenant.audit", resource_type="tenant"
            )
        report = await audit_integrity_service.verify_chain(session)

    assert report.ok, report.first_break
    assert [seq for seq, _, _ in await _chain(runtime_sessions, first)] == [1, 2, 3]
    assert [seq for seq, _, _ in await _chain(runtime_sessions, second)] == [1]
    async with admin_transaction(admin_sessions) as session:
        heads = dict(
            (
                await session.execute(
                    select(audit_chain_heads.c.tenant_id, audit_chain_heads.c.last_seq).where(
                        audit_chain_heads.c.tenant_id.in_([first, second])
                    )
                )
            ).all()
        )
    assert heads == {first: 3, second: 1}


async def test_verifier_sees_one_tenant_under_rls_and_every_tenant_as_admin(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_a, rows_a = await seed_chain(admin_sessions, 3)
    tenant_b, _ = await seed_chain(admin_sessions, 2)

    async with tenant_transaction(runtime_sessions, tenant_a) as session:
        as_tenant = await audit_integrity_service.verify_chain(session)
    async with admin_transaction(admin_sessions) as session:
        as_admin = await audit_integrity_service.verify_chain(session)
        one_as_admin = await audit_integrity_service.verify_chain(session, tenant_id=tenant_b)

    assert as_tenant.ok
    assert [status.tenant_id for status in as_tenant.tenants] == [tenant_a]
    assert (as_tenant.row_count, as_tenant.heads_checked) == (3, False)
    assert as_admin.ok, as_admin.first_break
    assert {tenant_a, tenant_b} <= {status.tenant_id for status in as_admin.tenants}
    assert as_admin.heads_checked
    by_tenant = {status.tenant_id: status for status in as_admin.tenants}
    assert by_tenant[tenant_a].head_hash == as_tenant.tenants[0].head_hash
    assert by_tenant[tenant_a].head_seq == 3
    assert [status.tenant_id for status in one_as_admin.tenants] == [tenant_b]
    assert one_as_admin.row_count == 2
    # The report serialises as the endpoint's JSON body.
    assert '"ok":true' in as_tenant.model_dump_json()
    assert len(rows_a) == 3


async def test_verifier_queries_plan_without_the_unused_tenant_filter(
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id, _ = await seed_chain(admin_sessions, 2)
    plans: dict[tuple[str, bool], str] = {}
    async with admin_transaction(admin_sessions) as session:
        for name, statements in (
            ("rows", audit_integrity_service._ROWS),
            ("heads", audit_integrity_service._CHAIN_HEADS),
        ):
            for scoped in (True, False):
                plan = await session.scalar(
                    text("EXPLAIN (FORMAT JSON) " + statements[scoped].text),
                    {"tenant_id": tenant_id if scoped else None},
                )
                plans[name, scoped] = json.dumps(plan)

    # One statement per scope: the tenant's is a plain index condition (and routes to one Citus
    # shard), every tenant's has no tenant filter at all.
    for name in ("rows", "heads"):
        assert f"(tenant_id = '{tenant_id}'::uuid)" in plans[name, True]
        assert "Index Cond" in plans[name, True]
        assert "IS NULL" not in plans[name, True]
        assert "tenant_id =" not in plans[name, False]
        assert "IS NULL" not in plans[name, False]
