"""A tenant's whole life: a database of its own (the purge is global), real S3 and OpenBao.

`seed_tenant` builds a tenant the way the content feature stores one: a key in OpenBao, users,
documents whose content is sealed under a fresh data key and stored in the object store; it
keeps a copy of each object and wrapped key, as a thief or a backup would.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.backends import ContentBackends
from app.content.key_manager import KeyManager
from app.content.object_store import ObjectStore
from app.core.config import get_settings
from app.database.session import admin_transaction
from app.models import Document, Tenant, User
from app.schemas.tenant import TenantCreate
from app.services import audit, document_content
from app.services import tenants as tenants_service
from app.services.actor import Actor
from testkit.factories import make_document, make_user
from tests.own_database import database_fixtures
from tests.test_content.test_envelope import collect, stream

OPERATOR = Actor.operator()

(
    database_set,
    migrated_db,
    settings,
    runtime_engine,
    runtime_sessions,
    owner_engine,
    admin_sessions,
    database,
) = database_fixtures()


@dataclass
class SeededTenant:
    """A tenant with users and documents with content, and copies taken before anything."""

    tenant_id: uuid.UUID
    key_ref: str
    user_ids: list[uuid.UUID]
    document_ids: list[uuid.UUID]
    object_keys: list[str]
    plaintexts: dict[uuid.UUID, bytes] = field(default_factory=dict)
    # What a backup or a thief holds: the ciphertext and the wrapped data key of each document.
    stolen: dict[uuid.UUID, tuple[bytes, bytes]] = field(default_factory=dict)


async def seed_tenant(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    keys: KeyManager,
    *,
    users: int = 2,
    documents: int = 3,
    content_bytes: int = 70_000,
) -> SeededTenant:
    """Commit a tenant with its own key, `users` users and `documents` documents whose content
    is uploaded through the content service (sealed, stored, recorded, audited)."""
    async with admin_transaction(admin_sessions) as session:
        tenant = await tenants_service.create_tenant(
            session, OPERATOR, TenantCreate(name=f"tenant-{uuid.uuid4().hex[:8]}"), keys
        )
        people = [await make_user(session, tenant) for _ in range(users)]
        for person in people:
            await audit.record(session, OPERATOR, "user.create", person, changed=["email"])
        files = [
            await make_document(session, people[0], size_bytes=content_bytes, status="processing")
            for _ in range(documents)
        ]
        for document in files:
            await audit.record(session, OPERATOR, "document.create", document, changed=["s3_key"])
    assert tenant.kms_key_arn is not None
    seeded = SeededTenant(tenant.id, tenant.kms_key_arn, [p.id for p in people], [], [])
    uploader = Actor.operator(tenant.id)
    for number, document in enumerate(files):
        plaintext = (f"document {number} of {tenant.id}: ".encode() * 4000)[:content_bytes]
        stored = await document_content.upload_content(
            runtime_sessions,
            uploader,
            document.id,
            stream([plaintext]),
            declared_type=document.content_type,
            declared_length=len(plaintext),
            max_bytes=len(plaintext),
            content=ContentBackends(get_settings(), store=store, keys=keys, owned=False),
        )
        assert stored.content_object_key is not None
        assert stored.content_wrapped_key is not None
        ciphertext = await collect(await store.get_stream(stored.content_object_key))
        seeded.document_ids.append(document.id)
        seeded.object_keys.append(stored.content_object_key)
        seeded.plaintexts[document.id] = plaintext
        seeded.stolen[document.id] = (ciphertext, stored.content_wrapped_key)
    return seeded


async def rows_of(
    admin_sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID
) -> dict[str, list[dict[str, Any]]]:
    """Every column of every row the tenant owns (tenant, users, documents), in id order."""
    tables: dict[str, Any] = {"tenants": Tenant, "users": User, "documents": Document}
    found: dict[str, list[dict[str, Any]]] = {}
    async with admin_transaction(admin_sessions) as session:
        for name, model in tables.items():
            table = model.__table__
            column = table.c.id if model is Tenant else table.c.tenant_id
            result = await session.execute(
                select(table).where(column == tenant_id).order_by(table.c.id)
            )
            found[name] = [
                {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row._mapping.items()}
                for row in result
            ]
    return found


async def objects_of(store: ObjectStore, keys: list[str]) -> dict[str, bytes | None]:
    """Each object's bytes, or None where there is none."""
    found: dict[str, bytes | None] = {}
    for key in keys:
        if await store.head(key) is None:
            found[key] = None
        else:
            found[key] = await collect(await store.get_stream(key))
    return found


@pytest.fixture(scope="session")
def anchor_key() -> Ed25519PrivateKey:
    """The anchor signing key of these tests."""
    return Ed25519PrivateKey.generate()


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The public half as base64 of its 32 raw bytes (what the standalone verifier takes)."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


# A second, fresh database to restore exports into.
(
    restore_database_set,
    restore_migrated_db,
    restore_settings,
    restore_runtime_engine,
    restore_runtime_sessions,
    restore_owner_engine,
    restore_admin_sessions,
    restore_database,
) = database_fixtures("restore_")
