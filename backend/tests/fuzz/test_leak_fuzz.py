"""The leak fuzzer, bounded for `make test` (`make fuzz` runs the long version), and proof that
it catches a leak."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import NotFoundError
from app.database import Database
from app.database.engine import build_engine, build_runtime_engine, targets_for
from app.database.session import admin_transaction, make_sessionmaker
from app.models import Document
from app.services import documents as documents_service
from app.services.actor import Actor
from testkit import database_harness as harness
from testkit.auth_helpers import TestIssuer
from tests.conftest import MigratedDatabase
from tests.fuzz.leak import FuzzEnvironment, fuzz

BOUNDED_OPERATIONS = 1_000
FUZZ_TENANTS = 20


@pytest.fixture(scope="module")
async def fuzz_environment(
    settings: Settings, migrated_db: MigratedDatabase, test_issuer: TestIssuer
) -> AsyncIterator[FuzzEnvironment]:
    """A database of its own (thousands of fuzz rows must not skew other tests' plans), and the
    app's runtime pool there: five connections, no overflow, shared by HTTP and services."""
    server = migrated_db.server
    own = harness.create_migrated_database(server)
    name, owner_url = own.name, own.owner_url
    fuzz_settings = settings.model_copy(
        update={"DATABASE_URL": SecretStr(owner_url.render_as_string(hide_password=False))}
    )
    targets = targets_for(owner_url, harness.RUNTIME_PASSWORD)
    runtime = build_runtime_engine(targets, fuzz_settings, pool_size=5, max_overflow=0)
    owner = build_engine(owner_url, fuzz_settings, pool_size=2, max_overflow=0)
    database = Database(targets=targets, engine=runtime, sessions=make_sessionmaker(runtime))
    yield FuzzEnvironment(fuzz_settings, database, make_sessionmaker(owner), test_issuer)
    await runtime.dispose()
    await owner.dispose()
    harness.drop_database(server, name)


async def test_bounded_leak_fuzz_finds_no_leak_no_5xx_and_matches_the_model(
    fuzz_environment: FuzzEnvironment,
) -> None:
    report = await fuzz(
        fuzz_environment,
        seed=20261125,
        operations=BOUNDED_OPERATIONS,
        tenants=FUZZ_TENANTS,
        concurrency=16,
        shrink_failures=False,
        # Searches must return exactly the tenant's true nearest documents, not just no leak.
        strict_search=True,
    )
    print(report.summary())
    assert report.failures == [], report.summary()
    assert sum(report.ops_by_kind.values()) == BOUNDED_OPERATIONS
    # Every kind ran through both channels, and hostile requests got their 4xx.
    assert all(n > 0 for n in report.ops_by_kind.values())
    assert len(report.ops_by_kind) == 2 * 15
    assert {403, 404, 409, 422} <= set(report.statuses)


async def test_fuzzer_reports_a_leak_with_its_seed_and_a_short_reproduction(
    fuzz_environment: FuzzEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_sessions = fuzz_environment.admin_sessions
    # A deliberate bug: the lookup forgets the tenant filter AND runs with RLS bypassed.
    honest = documents_service.get_document

    async def leaky_get_document(
        session: AsyncSession,
        actor: Actor,
        document_id: uuid.UUID,
        **options: Any,
    ) -> Document:
        try:
            return await honest(session, actor, document_id, **options)
        except NotFoundError:
            async with admin_transaction(admin_sessions) as bypass:
                found = await bypass.scalar(select(Document).where(Document.id == document_id))
            if found is None:
                raise
            return found

    monkeypatch.setattr(documents_service, "get_document", leaky_get_document)
    report = await fuzz(
        fuzz_environment, seed=7, operations=300, tenants=FUZZ_TENANTS, concurrency=16
    )
    summary = report.summary()
    print(summary)
    assert report.leaks > 0, summary
    assert "--seed 7" in summary
    assert report.shrunk is not None, summary
    assert 1 <= len(report.shrunk) <= 3, summary
    kinds: Any = {op.kind for op in report.shrunk}
    assert kinds & {"get_document", "update_document", "delete_document", "restore_document"}
    assert any(op.args.get("target", ("own",))[0] == "foreign" for op in report.shrunk)
