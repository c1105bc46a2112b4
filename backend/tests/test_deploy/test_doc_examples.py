"""The Python examples in MODEL_USAGE.md and RLS_PATTERNS.md run against the real database.

Each document's examples run in order in one namespace (like a reader going down the page):
`session` is an AsyncSession logged in as app_runtime, in a transaction scoped to `tenant` and
rolled back afterwards; `sessions` makes more runtime sessions, `admin_sessions` provisioning
ones, `superuser_sessions` superuser ones. `tenant` has an admin `user`; `other_tenant` has
`other_user`. Everything else an example imports itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database.engine import build_engine
from app.database.session import admin_transaction, make_sessionmaker, tenant_transaction
from testkit.factories import make_tenant, make_user
from tests.conftest import MigratedDatabase
from tests.test_deploy.artifacts import DOCS_DIR
from tests.test_deploy.doc_examples import DocExample, collect, run

# A document losing its runnable examples would silently stop being checked.
MINIMUM_EXAMPLES = {"MODEL_USAGE.md": 8, "RLS_PATTERNS.md": 6}


@pytest.fixture
async def superuser_sessions(
    settings: Settings, migrated_db: MigratedDatabase
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions as the server's superuser (to show what RLS does not bind)."""
    engine = build_engine(migrated_db.superuser_url, settings, pool_size=1, max_overflow=0)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def namespace(
    runtime_sessions: async_sessionmaker[AsyncSession],
    admin_sessions: async_sessionmaker[AsyncSession],
    superuser_sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[dict[str, Any]]:
    """What the examples may use without importing it."""
    async with admin_transaction(admin_sessions) as provisioning:
        tenant = await make_tenant(provisioning, name="Acme Health")
        user = await make_user(provisioning, tenant, email="ada@acme.example", role="admin")
        other_tenant = await make_tenant(provisioning, name="Globex Clinic")
        other_user = await make_user(provisioning, other_tenant, email="gil@globex.example")
    async with tenant_transaction(runtime_sessions, tenant.id) as session:
        yield {
            "__name__": "doc_example",
            "session": session,
            "sessions": runtime_sessions,
            "admin_sessions": admin_sessions,
            "superuser_sessions": superuser_sessions,
            "tenant": tenant,
            "user": user,
            "other_tenant": other_tenant,
            "other_user": other_user,
        }
        await session.rollback()  # the examples leave nothing behind


def _examples(name: str) -> list[DocExample]:
    return collect(DOCS_DIR / name)


@pytest.mark.parametrize("document", sorted(MINIMUM_EXAMPLES))
async def test_doc_examples_run_in_order(document: str, namespace: dict[str, Any]) -> None:
    for example in _examples(document):
        await run(example, namespace)


@pytest.mark.parametrize(("document", "minimum"), sorted(MINIMUM_EXAMPLES.items()))
def test_docs_keep_their_runnable_examples(document: str, minimum: int) -> None:
    assert len(_examples(document)) >= minimum
