"""Slim the audit chain trigger: one UPDATE on the tenant's head row, the hash input inline.

The chain format is unchanged (byte for byte: `audit_log_row_hash` stays the specification, and
the tests compare the trigger's hashes with it and with the Python verifier). What changes is
how the trigger gets there (issue 20; docs/AUDIT_INTEGRITY.md, "Cost"):

- **One statement on the head row.** Before: an upsert (which locks the row, then writes a new
  version) and an UPDATE (a second version) per audit row. Now a single `UPDATE … RETURNING`
  takes the next number and stores the new hash, computed in its SET list from the head's
  current `last_seq` and `last_hash`. Under READ COMMITTED a writer that waited for the row lock
  re-evaluates the SET list on the row version it locked, so the chain stays linear. The
  previous link (the new row's `prev_hash`) comes back through the head's new `prev_hash`
  column, set to the old `last_hash` in the same SET list: `RETURNING` only sees the new row
  version before PostgreSQL 18, and we support 15+. The column is only ever written, never read
  as input, so a tampered value can't leak into the chain. A tenant's very first row finds no
  head: the trigger then inserts a genesis head (sequence 0, zero hash; `ON CONFLICT DO
  NOTHING`, as a concurrent first writer may win) and runs the UPDATE again.
- **The hash input without a dozen SQL function calls.** `audit_log_row_hash(NEW)` is 13
  nested `audit_netstring` calls. The planner inlines them, but each inlined call still counts
  bytes through a `convert_to` copy and evaluates its argument three times (`to_char`, the
  `jsonb` text). The trigger now builds the same netstrings with built-in operators, counting
  bytes directly for the fields whose text is ASCII by construction: the fields of the new row
  as one PL/pgSQL expression, the two head fields inside the UPDATE.

Fillfactor 10 on the heads: every head update is already a HOT update (only the primary key
is indexed, and it never changes), but with the default fillfactor up to ~60 tenants' heads
share one 8 kB page, whose lock every writer of those tenants takes. Spread over pages (4 heads
each), 8 writers over 64 tenants used ~10 % less server CPU per insert in two runs
(docs/AUDIT_INTEGRITY.md, "Cost"). It costs ~20 MB per 10,000 tenants.

Revision ID: 68717d7c8021
Revises: c41f7a9e2b6d
Create Date: 2026-11-30 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "68717d7c8021"
down_revision: str | None = "c41f7a9e2b6d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "decode(repeat('00', 32), 'hex')"


def _netstring(value: str, *, ascii_only: bool = False) -> str:
    """SQL for docs/AUDIT_INTEGRITY.md's netstring of the text `value`, NULL as `-,`.

    `||` on text returns NULL when either side is NULL, so the COALESCE sees NULL exactly when
    `value` is NULL. The length is in UTF-8 bytes whatever the server encoding; for text that is
    ASCII by construction (UUIDs, numbers, timestamps, hex, addresses) that is its length in any
    server encoding, so those skip the `convert_to` copy.
    """
    length = (
        f"octet_length({value})" if ascii_only else f"octet_length(convert_to({value}, 'UTF8'))"
    )
    return f"COALESCE({length}::text || ':' || {value} || ',', '-,')"


# Fields 4-12 of the canonical encoding (docs/AUDIT_INTEGRITY.md), from the row being inserted;
# True where the text form is ASCII by construction.
ROW_FIELDS = "\n        || ".join(
    _netstring(value, ascii_only=ascii_only)
    for value, ascii_only in (
        ("NEW.id::text", True),
        ("to_char(NEW.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')", True),
        ("NEW.user_id::text", True),
        ("NEW.action", False),
        ("NEW.resource_type", False),
        ("NEW.resource_id::text", True),
        ("host(NEW.ip_address) || '/' || masklen(NEW.ip_address)", True),
        ("NEW.user_agent", False),
        ("NEW.metadata::text", False),
    )
)

SLIM_CHAIN_TRIGGER_FUNCTION = f"""
CREATE OR REPLACE FUNCTION chain_audit_log() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Fields 0 and 1, then 4-12: everything but the two links the head row supplies.
    leading_fields text;
    row_fields text;
BEGIN
    IF NEW.tenant_id IS NULL THEN
        RETURN NEW;  -- audit_logs.tenant_id's NOT NULL constraint refuses it, as for any table
    END IF;
    IF NOT isfinite(NEW.created_at) THEN
        RAISE EXCEPTION 'audit_logs.created_at must be a finite timestamp'
            USING ERRCODE = 'datetime_field_overflow';
    END IF;
    leading_fields := '13:audit_logs.v1,' || {_netstring("NEW.tenant_id::text", ascii_only=True)};
    row_fields := {ROW_FIELDS};
    LOOP
        -- Takes the tenant's head row lock, held until COMMIT or ROLLBACK.
        UPDATE public.audit_chain_heads AS head
        SET last_seq = head.last_seq + 1,
            prev_hash = head.last_hash,
            last_hash = sha256(convert_to(
                leading_fields
                || {_netstring("(head.last_seq + 1)::text", ascii_only=True)}
                || {_netstring("encode(head.last_hash, 'hex')", ascii_only=True)}
                || row_fields,
                'UTF8'))
        WHERE head.tenant_id = NEW.tenant_id
        RETURNING head.last_seq, head.prev_hash, head.last_hash
        INTO NEW.chain_seq, NEW.prev_hash, NEW.row_hash;
        EXIT WHEN FOUND;
        -- The tenant's first row: a genesis head, numbered by the UPDATE above on the next turn.
        INSERT INTO public.audit_chain_heads (tenant_id, last_seq, last_hash)
        VALUES (NEW.tenant_id, 0, {GENESIS_HASH})
        ON CONFLICT (tenant_id) DO NOTHING;
    END LOOP;
    RETURN NEW;
END
$$
"""

# The function as 93494aa1d1dd created it, restored on downgrade.
UPSERT_CHAIN_TRIGGER_FUNCTION = f"""
CREATE OR REPLACE FUNCTION chain_audit_log() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.tenant_id IS NULL THEN
        RETURN NEW;  -- audit_logs.tenant_id's NOT NULL constraint refuses it, as for any table
    END IF;
    IF NOT isfinite(NEW.created_at) THEN
        RAISE EXCEPTION 'audit_logs.created_at must be a finite timestamp'
            USING ERRCODE = 'datetime_field_overflow';
    END IF;
    -- Takes (or creates) the tenant's head row lock, held until COMMIT or ROLLBACK.
    INSERT INTO public.audit_chain_heads AS head (tenant_id, last_seq, last_hash)
    VALUES (NEW.tenant_id, 1, {GENESIS_HASH})
    ON CONFLICT (tenant_id) DO UPDATE SET last_seq = head.last_seq + 1
    RETURNING head.last_seq, head.last_hash INTO NEW.chain_seq, NEW.prev_hash;
    NEW.row_hash := public.audit_log_row_hash(NEW);
    UPDATE public.audit_chain_heads SET last_hash = NEW.row_hash
    WHERE tenant_id = NEW.tenant_id;
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.add_column(
        "audit_chain_heads",
        sa.Column(
            "prev_hash",
            sa.LargeBinary(),
            nullable=True,
            comment="last_hash before the newest row (its prev_hash); set by the chain trigger.",
        ),
    )
    op.execute("ALTER TABLE audit_chain_heads SET (fillfactor = 10)")
    op.execute(SLIM_CHAIN_TRIGGER_FUNCTION)


def downgrade() -> None:
    op.execute(UPSERT_CHAIN_TRIGGER_FUNCTION)
    op.execute("ALTER TABLE audit_chain_heads RESET (fillfactor)")
    op.drop_column("audit_chain_heads", "prev_hash")
