"""The audit chain trigger hashes one format() call; the tenant guard's WHEN clause shrinks.

Same chain format, byte for byte (`audit_log_row_hash` stays the specification; the tests in
tests/test_audit/ compare the trigger's hashes with it and with the Python verifier). What
changes is the work per audit insert (issue 20; docs/AUDIT_INTEGRITY.md, "Cost"):

- **The hash input is one `format()` call inside the head UPDATE.** Before, the trigger built it
  in two PL/pgSQL assignments plus the UPDATE's SET list: some thirteen netstrings of `||`,
  `COALESCE`, `octet_length` and casts, each an expression node PostgreSQL initialises again in
  every transaction (PL/pgSQL's expression state lives for one transaction, and the app writes
  one audit row per transaction). Now the input is built in the UPDATE's SET list alone, as one
  `format()` whose template carries the punctuation and the lengths that can't vary (a UUID's
  text is always 36 bytes), so only the variable lengths remain as expressions. A `perf`
  profile had the two assignments at about a third of the trigger's time.
- **The tenant guard's WHEN clause is a single comparison.** PostgreSQL parses a trigger's WHEN
  clause from its stored text for every INSERT statement; the guard's was a CASE over two
  `current_setting` calls, `NULLIF`, `row_security_active` and a uuid cast. Now it asks only
  "is the row's tenant other than the context, as text?", and `guard_audit_log_tenant()`
  (unchanged) decides the rest: it refuses exactly what it refused before (RLS's SQLSTATE and
  message), and lets through the rows that reach it without a context from a caller that
  bypasses RLS (the provisioning role), which now pay its call. A context naming the row's
  tenant in another spelling (upper case) also reaches the function, which lets it through.

Revision ID: 08d878f78db7
Revises: a9e3c5d7f1b2
Create Date: 2026-11-30 23:30:00
"""

import runpy
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "08d878f78db7"
down_revision: str | None = "a9e3c5d7f1b2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLIM_TRIGGER_MIGRATION = "20261130_1430_68717d7c8021_slim_audit_chain_trigger.py"
GUARD_WHEN_MIGRATION = "20261130_1920_e4a7c2d9b815_audit_guard_runs_only_to_refuse.py"

CREATED_AT_TEXT = "to_char(NEW.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


def _utf8_length(value: str) -> str:
    """SQL for the UTF-8 byte length of free text, whatever the server encoding."""
    return f"octet_length(convert_to({value}, 'UTF8'))"


def _nullable_netstring(value: str, length: str) -> str:
    """SQL for the netstring of a nullable field: `<length>:<value>,`, or `-,` for NULL."""
    return f"COALESCE({length} || ':' || {value} || ',', '-,')"


# docs/AUDIT_INTEGRITY.md's canonical encoding, fields 0-12, as (netstring template, arguments).
# A fixed length is written into the template: a UUID's text is always 36 bytes, a SHA-256 in
# hex 64 (the head's hash is always a SHA-256 or the 32-byte genesis). The arguments are
# format()'s %s, i.e. each type's text output, as in `audit_log_row_hash`.
FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("13:audit_logs.v1,", ()),
    ("36:%s,", ("NEW.tenant_id",)),
    ("%s:%s,", ("length((head.last_seq + 1)::text)", "head.last_seq + 1")),
    ("%s:%s,", ("octet_length(head.last_hash) * 2", "encode(head.last_hash, 'hex')")),
    ("36:%s,", ("NEW.id",)),
    ("%s:%s,", (f"length({CREATED_AT_TEXT})", CREATED_AT_TEXT)),
    ("%s", (_nullable_netstring("NEW.user_id::text", "'36'"),)),
    ("%s:%s,", (_utf8_length("NEW.action"), "NEW.action")),
    ("%s:%s,", (_utf8_length("NEW.resource_type"), "NEW.resource_type")),
    ("%s", (_nullable_netstring("NEW.resource_id::text", "'36'"),)),
    # inet's cast to text is host(ip) || '/' || masklen(ip), the mask always written.
    ("%s", (_nullable_netstring("NEW.ip_address::text", "length(NEW.ip_address::text)"),)),
    ("%s", (_nullable_netstring("NEW.user_agent", _utf8_length("NEW.user_agent")),)),
    ("%s:%s,", (_utf8_length("NEW.metadata::text"), "NEW.metadata")),
)
ARGUMENT_SEPARATOR = ",\n                "
MESSAGE = "format(\n                '{template}',\n                {arguments})".format(
    template="".join(template for template, _ in FIELDS),
    arguments=ARGUMENT_SEPARATOR.join(value for _, values in FIELDS for value in values),
)

CHAIN_TRIGGER_FUNCTION = f"""
CREATE OR REPLACE FUNCTION chain_audit_log() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    -- A primary-key UPDATE: its generic plan is always right (migration 7f3b9d1c5e42).
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    IF NOT isfinite(NEW.created_at) THEN
        RAISE EXCEPTION 'audit_logs.created_at must be a finite timestamp'
            USING ERRCODE = 'datetime_field_overflow';
    END IF;
    LOOP
        -- Takes the tenant's head row lock, held until COMMIT or ROLLBACK. Under READ
        -- COMMITTED a writer that waited re-evaluates the SET list on the version it locked.
        UPDATE public.audit_chain_heads AS head
        SET last_seq = head.last_seq + 1,
            prev_hash = head.last_hash,
            last_hash = sha256(convert_to({MESSAGE}, 'UTF8'))
        WHERE head.tenant_id = NEW.tenant_id
        RETURNING head.last_seq, head.prev_hash, head.last_hash
        INTO NEW.chain_seq, NEW.prev_hash, NEW.row_hash;
        EXIT WHEN FOUND;
        IF NEW.tenant_id IS NULL THEN
            RETURN NEW;  -- audit_logs.tenant_id's NOT NULL constraint refuses it, as for any table
        END IF;
        -- The tenant's first row: a genesis head, numbered by the UPDATE above on the next turn.
        INSERT INTO public.audit_chain_heads (tenant_id, last_seq, last_hash)
        VALUES (NEW.tenant_id, 0, decode(repeat('00', 32), 'hex'))
        ON CONFLICT (tenant_id) DO NOTHING;
    END LOOP;
    RETURN NEW;
END
$$
"""

# Only a row this lets through skips guard_audit_log_tenant(): its tenant's text is the
# context's, so the context is set and names the row's tenant. Every other row (no context,
# another tenant, another spelling) gets the function's full check.
GUARD_TRIGGER = (
    "CREATE TRIGGER zz_audit_log_tenant_guard BEFORE INSERT ON audit_logs FOR EACH ROW "
    "WHEN (NEW.tenant_id::text IS DISTINCT FROM current_setting('app.current_tenant_id', true)) "
    "EXECUTE FUNCTION guard_audit_log_tenant()"
)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(CHAIN_TRIGGER_FUNCTION)
    op.execute("DROP TRIGGER zz_audit_log_tenant_guard ON audit_logs")
    op.execute(GUARD_TRIGGER)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    slim = runpy.run_path(str(Path(__file__).with_name(SLIM_TRIGGER_MIGRATION)))
    op.execute(slim["SLIM_CHAIN_TRIGGER_FUNCTION"])
    op.execute("ALTER FUNCTION chain_audit_log() SET plan_cache_mode = force_generic_plan")
    # e4a7c2d9b815's upgrade drops the guard and creates it with its WHEN clause.
    runpy.run_path(str(Path(__file__).with_name(GUARD_WHEN_MIGRATION)))["upgrade"]()
