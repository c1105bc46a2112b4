"""The audit chain trigger plans its head-row UPDATE once per connection, not once per row.

The app's connections run with `plan_cache_mode = force_custom_plan` (app/database/engine.py:
a generic plan made for the average tenant can be 50x slower for a large one). That setting
also reaches the statements PL/pgSQL runs inside triggers, so the chain trigger's `UPDATE …
RETURNING` on the tenant's head row was planned again for every audit row. That statement is a
primary-key lookup whatever the tenant, so its generic plan is always the right one: the
function now sets `plan_cache_mode = force_generic_plan` for its own duration (its SET clause
already pins search_path, so no extra save/restore). Measured in docs/AUDIT_INTEGRITY.md,
"Cost" (issue 20).

Revision ID: 7f3b9d1c5e42
Revises: e4a7c2d9b815
Create Date: 2026-11-30 19:25:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "7f3b9d1c5e42"
down_revision: str | None = "e4a7c2d9b815"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER FUNCTION chain_audit_log() SET plan_cache_mode = force_generic_plan")


def downgrade() -> None:
    op.execute("ALTER FUNCTION chain_audit_log() RESET plan_cache_mode")
