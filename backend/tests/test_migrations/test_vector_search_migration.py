"""Vector search migrations (be3034b43ca6, c41f7a9e2b6d, 5d2e8f1a9c37, 8b61c0d4e2f5,
a9e3c5d7f1b2): up, down, up, as the migrator."""

from __future__ import annotations

import runpy

import psycopg

from app.core.config import BACKEND_DIR
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


TEMPLATE = "a9e3c5d7f1b2"
BEFORE_TEMPLATE = "7f3b9d1c5e42"
TEMPLATE_MIGRATION = (
    BACKEND_DIR
    / "alembic"
    / "versions"
    / "20261130_2015_a9e3c5d7f1b2_search_functions_from_one_template.py"
)


def _bodies(url: object) -> dict[str, tuple[str, str]]:
    """Each search function's body and arguments, as the server holds them."""
    with psycopg.connect(harness.libpq(url)) as conn:  # type: ignore[arg-type]
        rows = conn.execute(
            "SELECT proname, prosrc, pg_get_function_identity_arguments(oid) FROM pg_proc"
            " WHERE proname IN ('search_documents', 'search_document_chunks')"
        ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def test_both_search_functions_are_the_one_template_and_the_migration_reverses(
    test_server: harness.TestServer,
) -> None:
    """search_documents() and search_document_chunks() are rendered from one template (their
    bodies on the server are the template's); the downgrade restores both earlier bodies (the
    chunks' one without filters or generic plans), and the upgrade the template's again."""
    rendered = runpy.run_path(str(TEMPLATE_MIGRATION))["FUNCTIONS"]
    name = harness.create_database(test_server, owner=harness.MIGRATOR_ROLE)
    harness.bootstrap_least_privilege(test_server, name)
    url = test_server.url(name, username=harness.MIGRATOR_ROLE, password=harness.MIGRATOR_PASSWORD)
    try:
        superuser = test_server.url(name)
        migrations.upgrade(url, harness.RUNTIME_PASSWORD, TEMPLATE)
        for _ in range(2):
            bodies = _bodies(superuser)
            for function, sql in rendered.items():
                body = sql.split("AS $function$", 1)[1].rsplit("$function$", 1)[0]
                assert bodies[function][0] == body
                assert "force_generic_plan" in sql
                assert "ef_search=" in body
            assert bodies["search_document_chunks"][1].count("jsonb") == 1  # the filters
            migrations.downgrade(url, BEFORE_TEMPLATE)
            before = _bodies(superuser)
            assert "ef_search=" not in before["search_documents"][0]
            assert "jsonb" not in before["search_document_chunks"][1]
            assert "to_regclass" not in before["search_document_chunks"][0]
            migrations.upgrade(url, harness.RUNTIME_PASSWORD, TEMPLATE)
    finally:
        harness.drop_database(test_server, name)
