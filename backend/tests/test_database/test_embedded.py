"""The embedded PostgreSQL starts and ships a working pgvector."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
import pytest

from app.database import embedded
from testkit import database_harness as harness


def test_embedded_server_runs_pgvector(test_server: harness.TestServer) -> None:
    # Use a server of our own even when the suite runs against TEST_DATABASE_URL.
    server = embedded.start_embedded(Path(tempfile.mkdtemp(prefix="emb-")), ephemeral=True)
    try:
        with psycopg.connect(server.libpq_superuser_dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            row = conn.execute("SELECT '[1,2,3]'::vector <=> '[1,2,4]'").fetchone()
            version = conn.execute("SHOW server_version_num").fetchone()
        assert row is not None
        assert row[0] == pytest.approx(0.00853986, rel=1e-4)
        assert version is not None
        assert int(version[0]) >= 150000
    finally:
        server.destroy()


def test_embedded_server_requires_passwords_from_other_roles(tmp_path: Path) -> None:
    server = embedded.start_embedded(tmp_path / "db", ephemeral=True)
    try:
        with psycopg.connect(server.libpq_superuser_dsn(), autocommit=True) as conn:
            conn.execute("CREATE ROLE someone LOGIN PASSWORD 'right'")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"postgresql://someone:wrong@/app?host={server.socket_dir}")
        with psycopg.connect(f"postgresql://someone:right@/app?host={server.socket_dir}") as ok:
            assert ok.execute("SELECT current_user").fetchone() == ("someone",)
    finally:
        server.destroy()


def test_runtime_password_is_generated_once_and_private(tmp_path: Path) -> None:
    first = embedded.runtime_password_for(tmp_path)
    assert len(first) >= 32
    assert embedded.runtime_password_for(tmp_path) == first
    assert (tmp_path / "app_runtime.password").stat().st_mode & 0o077 == 0
