"""Audit-chain fixtures: a database of its own where chains get broken on purpose, and helpers.

Tampering is done the way an attacker with database access would: as a superuser with the
triggers switched off (`session_replication_role = replica`), so the append-only triggers and
the chain trigger don't fire.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import admin_transaction
from app.models import AuditLog
from testkit import database_harness as harness
from testkit.factories import make_tenant
from tests.own_database import database_fixtures

# A database of its own for tests that break chains (the shared one stays intact).
(
    tamper_database_set,
    tamper_migrated_db,
    tamper_settings,
    tamper_runtime_engine,
    tamper_runtime_sessions,
    tamper_owner_engine,
    tamper_admin_sessions,
    tamper_database,
) = database_fixtures("tamper_")


async def seed_chain(
    admin_sessions: async_sessionmaker[AsyncSession], length: int
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A new tenant with `length` audit rows, one transaction each; returns (tenant, row ids)."""
    async with admin_transaction(admin_sessions) as session:
        tenant_id = (await make_tenant(session)).id
    row_ids = []
    for number in range(1, length + 1):
        async with admin_transaction(admin_sessions) as session:
            entry = await AuditLog.create(
                session,
                tenant_id=tenant_id,
                action=f"document.event{number}",
                resource_type="document",
                resource_id=uuid.uuid4(),
                ip_address="203.0.113.7",
                user_agent="pytest",
                metadata={"request_id": f"req-{number}", "fields": ["filename"]},
            )
            row_ids.append(entry.id)
    return tenant_id, row_ids


@contextmanager
def attacker(url: URL) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection with every trigger switched off, in one committed transaction."""
    with psycopg.connect(harness.libpq(url)) as conn:
        conn.execute("SET session_replication_role = replica")
        yield conn


def new_signing_key() -> tuple[Ed25519PrivateKey, str]:
    """A fresh Ed25519 key and its base64 raw form (what AUDIT_ANCHOR_SIGNING_KEY holds)."""
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return key, base64.b64encode(raw).decode()
