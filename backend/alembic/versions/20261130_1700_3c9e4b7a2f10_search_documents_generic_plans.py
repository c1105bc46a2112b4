"""search_documents() plans its own statements once per session (generic plans).

Every partial index on `documents` adds to the planning of every query on it: the planner checks
each index's predicate. With one HNSW index per large tenant (issue 16), the app's
plan_cache_mode = force_custom_plan made search_documents() plan its static statements on every
call: measured with 400 per-tenant indexes, a 1-row tenant's search took 5.2 ms against 1.5 ms
for a plain exact scan (0.7 against 0.45 ms with none). With generic plans inside the function,
1.5 ms (docs/VECTOR_SEARCH.md).

A generic plan is safe here: the statements it covers (the catalog lookup, the bounded count and
the exact scan) all read the tenant's rows through idx_documents_tenant_embedded whatever the
tenant's size, and a generic plan can never prove a per-tenant index's predicate, so it never
walks one. The HNSW walk is dynamic SQL (EXECUTE), planned on every call with the tenant id as a
literal, as before.

Revision ID: 3c9e4b7a2f10
Revises: 8b61c0d4e2f5
Create Date: 2026-11-30 17:00:00
"""

import runpy
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "3c9e4b7a2f10"
down_revision: str | None = "8b61c0d4e2f5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREVIOUS_MIGRATION = "20261130_1440_5d2e8f1a9c37_search_tenant_own_vector_index.py"
PREVIOUS_FUNCTION: str = runpy.run_path(str(Path(__file__).with_name(PREVIOUS_MIGRATION)))[
    "FUNCTION"
]
# The function's settings are SET clauses: restored on exit, so nothing leaks to the caller.
GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan\n"
FUNCTION = PREVIOUS_FUNCTION.replace(
    "SET enable_sort = off\n", "SET enable_sort = off\n" + GENERIC_PLANS, 1
)
assert FUNCTION != PREVIOUS_FUNCTION


def upgrade() -> None:
    # The SET clauses name pgvector's hnsw.* settings, known once its library is loaded.
    op.execute("SELECT '[0]'::vector")
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute("SELECT '[0]'::vector")
    op.execute(PREVIOUS_FUNCTION)
