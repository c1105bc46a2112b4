"""Migration 1 (pgvector) on a fresh database: up, down, up."""

from __future__ import annotations

import psycopg

from app.database import migrations
from testkit import database_harness as harness

PGVECTOR_REVISION = "1ef269d5fac7"


def _has_vector(url: object) -> bool:
    with psycopg.connect(harness.libpq(url)) as conn:  # type: ignore[arg-type]
        return (
            conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
            is not None
        )


def test_pgvector_migration_up_down_up(test_server: harness.TestServer) -> None:
    name = harness.create_database(test_server)
    url = test_server.url(name)
    try:
        migrations.upgrade(url, None, PGVECTOR_REVISION)
        assert migrations.current_revision(url) == PGVECTOR_REVISION
        assert _has_vector(url)
        with psycopg.connect(harness.libpq(url)) as conn:
            distance = conn.execute("SELECT '[1,2,3]'::vector <=> '[1,2,4]'").fetchone()
        assert distance is not None
        assert 0 < distance[0] < 0.01

        migrations.downgrade(url, "base")
        assert migrations.current_revision(url) is None
        assert not _has_vector(url)

        migrations.upgrade(url, None, PGVECTOR_REVISION)
        assert _has_vector(url)
    finally:
        harness.drop_database(test_server, name)
