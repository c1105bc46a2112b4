"""The queue's and the chunks' SECURITY DEFINER functions search pg_temp last.

`enqueue_document_ingest`, `tenant_ingest_jobs` and `purge_document_chunks` run as their owner
with `search_path = pg_catalog, public`. With pg_temp not named, PostgreSQL searches it
first, so a caller able to create temporary objects could shadow `public` names inside a
function that runs with the owner's rights. Naming it last closes that (PostgreSQL's own advice
for SECURITY DEFINER functions; pgrls rule SEC015).

Revision ID: d4a8c3e1f927
Revises: b7d2e9a4c1f6
Create Date: 2026-11-30 19:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "d4a8c3e1f927"
down_revision: str | None = "b7d2e9a4c1f6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFINER_FUNCTIONS = (
    "enqueue_document_ingest(uuid)",
    "tenant_ingest_jobs(text, integer)",
    "purge_document_chunks(uuid)",
)


def upgrade() -> None:
    for function in DEFINER_FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET search_path = pg_catalog, public, pg_temp")


def downgrade() -> None:
    for function in DEFINER_FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET search_path = pg_catalog, public")
