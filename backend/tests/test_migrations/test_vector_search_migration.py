"""Vector search migrations (be3034b43ca6, c41f7a9e2b6d, 5d2e8f1a9c37, 8b61c0d4e2f5): up, down,
up, as the migrator."""

from __future__ import annotations

import psycopg

from app.database import migrations
from testkit import database_harness as harness

REVISION = "be3034b43ca6"
SHARED_INDEX_AT_128 = "c41f7a9e2b6d"
HEAD = "8b61c0d4e2f5"
PREVIOUS = "a7b8c9d0e1f2"


def _ef_construction(url: object) -> str | None:
    """The shared HNSW index's ef_construction, or None when there is no shared index."""
    with psycopg.connect(harness.libpq(url)) as conn:  # type: ignore[arg-type]
        row = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_documents_embedding_hnsw'"
        ).fetchone()
    if row is None:
        return None
    return str(row[0].split("ef_construction='")[1].split("'")[0])


def _walks_own_index(url: object) -> bool:
    """Whether search_documents() looks up the tenant's own index (5d2e8f1a9c37's body)."""
    with psycopg.connect(harness.libpq(url)) as conn:  # type: ignore[arg-type]
        row = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE proname = 'search_documents'"
        ).fetchone()
    assert row is not None
    return "idx_documents_hnsw_tenant_" in row[0]


def _state(url: object) -> tuple[bool, bool, bool]:
    """(tenant index exists, function exists, app_runtime may execute it)."""
    with psycopg.connect(harness.libpq(url)) as conn:  # type: ignore[arg-type]
        index = conn.execute(
            "SELECT 1 FROM pg_indexes WHERE indexname = 'idx_documents_tenant_embedded'"
        ).fetchone()
        function = conn.execute(
            "SELECT p.oid FROM pg_proc p WHERE p.proname = 'search_documents'"
        ).fetchone()
        executable = function is not None and conn.execute(
            "SELECT has_function_privilege('app_runtime', %s, 'EXECUTE')"
            " AND NOT has_function_privilege('public', %s, 'EXECUTE')",
            (function[0], function[0]),
        ).fetchone() == (True,)
    return index is not None, function is not None, executable


def test_vector_search_migration_up_down_up(test_server: harness.TestServer) -> None:
    name = harness.create_database(test_server, owner=harness.MIGRATOR_ROLE)
    harness.bootstrap_least_privilege(test_server, name)
    url = test_server.url(name, username=harness.MIGRATOR_ROLE, password=harness.MIGRATOR_PASSWORD)
    try:
        superuser = test_server.url(name)
        migrations.upgrade(url, harness.RUNTIME_PASSWORD, HEAD)
        assert _state(superuser) == (True, True, True)
        assert _ef_construction(superuser) is None
        assert _walks_own_index(superuser)

        migrations.downgrade(url, SHARED_INDEX_AT_128)
        assert _state(superuser) == (True, True, True)
        assert _ef_construction(superuser) == "128"
        assert not _walks_own_index(superuser)

        migrations.downgrade(url, REVISION)
        assert _ef_construction(superuser) == "64"
        migrations.downgrade(url, PREVIOUS)
        assert migrations.current_revision(url) == PREVIOUS
        assert _state(superuser) == (False, False, False)

        migrations.upgrade(url, harness.RUNTIME_PASSWORD, HEAD)
        assert _state(superuser) == (True, True, True)
        assert _ef_construction(superuser) is None
        assert _walks_own_index(superuser)
    finally:
        harness.drop_database(test_server, name)
