"""The four models against the real schema: defaults, constraints, relationships, repr."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from app.database.session import admin_transaction, tenant_transaction
from app.models import SYSTEM_TENANT_ID, AuditLog, Document, ImmutableAuditLogError, Tenant, User
from testkit.database_harness import sqlstate
from testkit.factories import make_document, make_tenant, make_user, provision_tenant

UNIQUE_VIOLATION = "23505"


async def test_tenant_create_defaults_and_soft_delete(
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with admin_transaction(admin_sessions) as session:
        tenant = await make_tenant(session, name="Acme Clinic")
        # Server-side defaults are fetched back at flush (eager_defaults).
        assert isinstance(tenant.id, uuid.UUID)
        assert tenant.status == "active"
        assert tenant.created_at is not None
        assert tenant.updated_at is not None
    async with admin_transaction(admin_sessions) as session:
        (await session.get_one(Tenant, tenant.id)).soft_delete()
    async with admin_transaction(admin_sessions) as session:
        active = await session.scalar(Tenant.active_query().where(Tenant.id == tenant.id))
        deleted = await session.scalar(Tenant.deleted_query().where(Tenant.id == tenant.id))
        system = await session.get_one(Tenant, uuid.UUID(SYSTEM_TENANT_ID))
    assert active is None
    assert deleted is not None
    assert deleted.name == "Acme Clinic"
    assert deleted.deleted_at is not None
    assert deleted.updated_at > deleted.created_at  # maintained by the set_updated_at trigger
    assert (system.name, system.status) == ("System", "active")


async def test_user_belongs_to_tenant_and_active_email_is_unique(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions, users=0)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        user = await make_user(session, tenant.tenant_id, email="ada@example.org")
        assert user.role == "member"
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        loaded = await session.scalar(
            select(User).where(User.id == user.id).options(selectinload(User.tenant))
        )
    assert loaded is not None
    assert loaded.tenant.id == tenant.tenant_id

    with pytest.raises(IntegrityError) as duplicate:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            await make_user(session, tenant.tenant_id, email="ada@example.org")
    assert sqlstate(duplicate.value) == UNIQUE_VIOLATION
    assert "idx_users_tenant_email_active" in str(duplicate.value.orig)


async def test_email_is_normalised_so_case_variants_conflict_only_within_a_tenant(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    first = await provision_tenant(admin_sessions, users=0)
    second = await provision_tenant(admin_sessions, users=0)
    async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
        user = await make_user(session, first.tenant_id, email="  A@X.org ")
        # NFKC folds the full-width letters, casefold the case: one canonical address.
        assert user.email == "a@x.org"
        assert User(tenant_id=first.tenant_id, email="\uff21@\uff38.ORG").email == "a@x.org"
    for variant in ("a@x.org", "A@x.org", "\uff21@x.org"):
        with pytest.raises(IntegrityError) as conflict:
            async with tenant_transaction(runtime_sessions, first.tenant_id) as session:
                await make_user(session, first.tenant_id, email=variant)
        assert sqlstate(conflict.value) == UNIQUE_VIOLATION

    async with tenant_transaction(runtime_sessions, second.tenant_id) as session:
        other = await make_user(session, second.tenant_id, email="A@x.org")
        # The second tenant sees only its own user with that address.
        visible = (await session.scalars(select(User).where(User.email == "a@x.org"))).all()
    assert [u.id for u in visible] == [other.id]


async def test_soft_deleted_user_frees_the_email_for_reuse(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions, users=0)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        original = await make_user(session, tenant.tenant_id, email="reuse@example.org")
        original.soft_delete()
        await session.flush()
        successor = await make_user(session, tenant.tenant_id, email="Reuse@example.org")
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        rows = (await session.scalars(select(User).where(User.email == "reuse@example.org"))).all()
    assert {(u.id, u.is_active) for u in rows} == {(original.id, False), (successor.id, True)}

    # Restoring the first one would make two active users with one email: refused.
    with pytest.raises(IntegrityError) as conflict:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            (await session.get_one(User, original.id)).restore()
    assert sqlstate(conflict.value) == UNIQUE_VIOLATION


async def test_relationships_load_only_when_asked(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions, users=2, documents=3)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        await AuditLog.create(
            session,
            tenant_id=tenant.tenant_id,
            user_id=tenant.user_ids[0],
            action="document.create",
            resource_type="document",
        )
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        loaded = await session.scalar(
            select(Tenant)
            .where(Tenant.id == tenant.tenant_id)
            .options(
                selectinload(Tenant.users).selectinload(User.documents),
                selectinload(Tenant.documents).selectinload(Document.user),
                selectinload(Tenant.audit_logs).selectinload(AuditLog.user),
            )
        )
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        bare = await session.scalar(select(User).where(User.id == tenant.user_ids[1]))
    assert loaded is not None
    assert {u.id for u in loaded.users} == set(tenant.user_ids)
    uploader = next(u for u in loaded.users if u.id == tenant.user_ids[0])
    assert {d.id for d in uploader.documents} == set(tenant.document_ids)
    assert {d.user.id for d in loaded.documents} == {tenant.user_ids[0]}
    assert [(a.action, a.user.id if a.user else None) for a in loaded.audit_logs] == [
        ("document.create", tenant.user_ids[0])
    ]
    # Anything not loaded explicitly raises instead of doing hidden I/O.
    assert bare is not None
    with pytest.raises(InvalidRequestError, match="lazy='raise'"):
        _ = bare.documents
    with pytest.raises(InvalidRequestError, match="lazy='raise'"):
        _ = bare.tenant


async def test_document_defaults_and_similarity_order(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions)
    axis = [1.0] + [0.0] * 1023
    near = [1.0, 0.1] + [0.0] * 1022
    far = [0.0, 1.0] + [0.0] * 1022
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        user = await session.get_one(User, tenant.user_ids[0])
        far_doc = await make_document(session, user, embedding_vector=far)
        near_doc = await make_document(session, user, embedding_vector=near)
        assert (near_doc.status, near_doc.metadata_) == ("processing", {})
        hits = await Document.similarity_search(session, axis, k=2)
    assert [hit.document.id for hit in hits] == [near_doc.id, far_doc.id]
    assert hits[0].distance < hits[1].distance


async def test_audit_log_is_append_only_in_the_orm(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        entry = await AuditLog.create(
            session, tenant_id=tenant.tenant_id, action="user.login", resource_type="user"
        )
    assert not hasattr(AuditLog, "update")
    assert not hasattr(AuditLog, "delete")
    assert not hasattr(entry, "deleted_at")
    assert "updated_at" not in AuditLog.__table__.c

    async def rename() -> None:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            loaded = await session.get_one(AuditLog, entry.id)
            loaded.action = "user.logout"

    with pytest.raises(ImmutableAuditLogError, match="cannot be modified"):
        await rename()
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        assert (await session.get_one(AuditLog, entry.id)).action == "user.login"


async def test_repr_shows_no_personal_data(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions, users=0)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        user = await make_user(
            session, tenant.tenant_id, email="grace.hopper@navy.example", full_name="Grace Hopper"
        )
        document = await make_document(session, user, filename="hopper-diagnosis.pdf")
        entry = await AuditLog.create(
            session,
            tenant_id=tenant.tenant_id,
            user_id=user.id,
            action="document.create",
            resource_type="document",
            ip_address="203.0.113.7",
            user_agent="Mozilla/5.0 (Hopper)",
        )
        loaded_tenant = await session.get_one(Tenant, tenant.tenant_id)
    rendered = " ".join(repr(obj) for obj in (user, document, entry, loaded_tenant))
    assert str(user.id) in repr(user)
    for secret in ("grace", "hopper", "navy", "203.0.113.7", "Mozilla", loaded_tenant.name):
        assert secret.lower() not in rendered.lower()
