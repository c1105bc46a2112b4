"""Small factory functions for test data. Call them inside an admin or tenant transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.backends import ContentBackends
from app.content.key_manager import KeyManager
from app.content.object_store import S3ObjectStore
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import get_settings
from app.database.base import Base
from app.database.session import admin_transaction, tenant_transaction
from app.models import Document, Tenant, User
from app.services import document_content as document_content_service
from app.services import tenants as tenants_service
from app.services.actor import Actor


async def make_tenant(session: AsyncSession, name: str | None = None, **fields: Any) -> Tenant:
    """Insert a tenant (needs the provisioning role: the runtime role can't create tenants)."""
    tenant = Tenant(name=name or f"tenant-{uuid.uuid4().hex[:8]}", **fields)
    session.add(tenant)
    await session.flush()
    return tenant


async def make_user(
    session: AsyncSession, tenant: Tenant | uuid.UUID, email: str | None = None, **fields: Any
) -> User:
    """Insert a user of `tenant`."""
    tenant_id = tenant.id if isinstance(tenant, Tenant) else tenant
    user = User(
        tenant_id=tenant_id,
        email=email or f"user-{uuid.uuid4().hex[:8]}@example.org",
        external_idp_id=fields.pop("external_idp_id", f"sub-{uuid.uuid4().hex}"),
        **fields,
    )
    session.add(user)
    await session.flush()
    return user


async def make_document(session: AsyncSession, user: User, **fields: Any) -> Document:
    """Insert a document uploaded by `user` (in the user's tenant)."""
    values: dict[str, Any] = {
        "s3_bucket": "test-bucket",
        "s3_key": f"docs/{uuid.uuid4().hex}.pdf",
        "filename": "report.pdf",
        "content_type": "application/pdf",
        "size_bytes": 1024,
    }
    values.update(fields)
    document = Document(tenant_id=user.tenant_id, user_id=user.id, **values)
    session.add(document)
    await session.flush()
    return document


async def make_tenant_with_vectors(
    admin_sessions: async_sessionmaker[AsyncSession], vectors: np.ndarray
) -> uuid.UUID:
    """A committed tenant whose documents carry `vectors` (one each), for vector search."""
    async with admin_transaction(admin_sessions) as session:
        tenant_id = (await make_tenant(session)).id
        user = await make_user(session, tenant_id)
        for vector in vectors:
            session.add(
                Document(
                    tenant_id=tenant_id,
                    user_id=user.id,
                    s3_bucket="test-bucket",
                    s3_key=f"docs/{uuid.uuid4()}.pdf",
                    filename="note.txt",
                    content_type="text/plain",
                    size_bytes=10,
                    embedding_vector=[float(x) for x in vector],
                )
            )
    return tenant_id


@dataclass(frozen=True)
class ProvisionedTenant:
    """Ids of a committed tenant, its users and its documents (all uploaded by the first user)."""

    tenant_id: uuid.UUID
    user_ids: list[uuid.UUID]
    document_ids: list[uuid.UUID]


async def provision_tenant(
    admin_sessions: async_sessionmaker[AsyncSession], *, users: int = 1, documents: int = 0
) -> ProvisionedTenant:
    """Create and commit a tenant with `users` users and `documents` documents, as app_admin."""
    async with admin_transaction(admin_sessions) as session:
        tenant = await make_tenant(session)
        people = [await make_user(session, tenant) for _ in range(users)]
        files = [await make_document(session, people[0]) for _ in range(documents)]
    return ProvisionedTenant(
        tenant_id=tenant.id,
        user_ids=[person.id for person in people],
        document_ids=[document.id for document in files],
    )


async def insert_row(
    sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID | None, row: Base
) -> None:
    """Insert `row` in a transaction of its own, under `tenant_id` (None: with no context)."""
    if tenant_id is None:
        async with sessions() as session, session.begin():
            session.add(row)
            await session.flush()
        return
    async with tenant_transaction(sessions, tenant_id) as session:
        session.add(row)
        await session.flush()


async def give_tenant_key(
    admin_sessions: async_sessionmaker[AsyncSession], keys: KeyManager, tenant_id: uuid.UUID
) -> str:
    """Provision the tenant's own key (as `create-tenant` does) and return its reference."""
    async with admin_transaction(admin_sessions) as session:
        tenant = await tenants_service.provision_tenant_key(
            session, Actor.operator(source="test"), tenant_id, keys
        )
    assert tenant.kms_key_arn is not None
    return tenant.kms_key_arn


async def _chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def document_with_content(
    sessions: async_sessionmaker[AsyncSession],
    user: User,
    data: bytes,
    store: S3ObjectStore,
    keys: OpenBaoTransitKeyManager,
    *,
    role: str = "admin",
) -> Document:
    """Register a document of `user` and upload `data` as its content (the service's path)."""
    actor = Actor.user(tenant_id=user.tenant_id, user_id=user.id, role=role)
    async with tenant_transaction(sessions, user.tenant_id) as session:
        document = await make_document(session, user, size_bytes=len(data))
    return await document_content_service.upload_content(
        sessions,
        actor,
        document.id,
        _chunks(data),
        declared_type=document.content_type,
        declared_length=len(data),
        max_bytes=max(len(data), 1024 * 1024),
        content=ContentBackends(get_settings(), store=store, keys=keys, owned=False),
    )
