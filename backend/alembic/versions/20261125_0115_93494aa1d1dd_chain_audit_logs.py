"""Chain every tenant's audit rows with SHA-256, computed by the database at insert time.

Each audit row gets `chain_seq` (1, 2, 3… per tenant), `prev_hash` (the previous row's
`row_hash`; 32 zero bytes for the first) and `row_hash` = sha256 of the row's canonical encoding
(`audit_log_row_hash`, documented in docs/AUDIT_INTEGRITY.md). A BEFORE INSERT trigger fills
them, overwriting whatever the client sent, so no code path can skip or forge them.

Serialisation: the trigger upserts the tenant's row in `audit_chain_heads`, which row-locks it
until the transaction ends. Writers of one tenant queue on that row, writers of different
tenants touch different rows and never wait on each other. The head row is updated in the
inserting transaction, so a rollback rolls it back too: no gap.

`audit_chain_heads` is written only by the trigger function (SECURITY DEFINER, owned by the
table owner, not executable by anyone): the runtime role has no privilege on it at all.

A second, SECURITY INVOKER trigger fires just before it and refuses a row RLS would refuse (a
row for another tenant than the transaction's, or any row from a caller subject to RLS with no
tenant context) with RLS's own SQLSTATE and message, so a tenant can neither lock another
tenant's chain head nor tell this refusal from RLS's. It must run as the caller: inside the
SECURITY DEFINER function `current_user` is the owner, so only the invoker can ask
`row_security_active`. Callers that bypass RLS (app_admin in the admin CLI) insert for any
tenant when they have set no context.

Existing rows are chained per tenant in (created_at, id) order.

Revision ID: 93494aa1d1dd
Revises: be3034b43ca6
Create Date: 2026-11-25 01:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "93494aa1d1dd"
down_revision: str | None = "be3034b43ca6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "decode(repeat('00', 32), 'hex')"

# The canonical encoding: a version tag then every column as a netstring of its UTF-8 text
# (`<byte length>:<bytes>,`), NULL as `-,`. docs/AUDIT_INTEGRITY.md is the specification;
# app/services/audit_integrity.py and scripts/verify_audit_chain.py re-implement it on purpose.
# Neither helper has a SET search_path clause, so the planner can inline them (a SET clause
# costs a configuration save/restore per call, 13 per row): they name only pg_catalog objects,
# which are always searched first, and schema-qualify everything else.
ROW_HASH_FUNCTION = """
CREATE FUNCTION audit_log_row_hash(entry public.audit_logs) RETURNS bytea
    LANGUAGE sql
    STABLE
AS $$
    SELECT sha256(convert_to(
        public.audit_netstring('audit_logs.v1')
        || public.audit_netstring(entry.tenant_id::text)
        || public.audit_netstring(entry.chain_seq::text)
        || public.audit_netstring(encode(entry.prev_hash, 'hex'))
        || public.audit_netstring(entry.id::text)
        || public.audit_netstring(
            to_char(entry.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
        || public.audit_netstring(entry.user_id::text)
        || public.audit_netstring(entry.action)
        || public.audit_netstring(entry.resource_type)
        || public.audit_netstring(entry.resource_id::text)
        || public.audit_netstring(host(entry.ip_address) || '/' || masklen(entry.ip_address))
        || public.audit_netstring(entry.user_agent)
        || public.audit_netstring(entry.metadata::text),
        'UTF8'))
$$
"""

NETSTRING_FUNCTION = """
CREATE FUNCTION audit_netstring(value text) RETURNS text
    LANGUAGE sql
    STABLE
AS $$
    SELECT CASE WHEN value IS NULL THEN '-,'
                ELSE octet_length(convert_to(value, 'UTF8'))::text || ':' || value || ','
           END
$$
"""

# Runs as the caller (no SECURITY DEFINER): `row_security_active` answers for the caller only
# there. search_path is pinned like every trigger function's (test_runtime_role checks it).
TENANT_GUARD_FUNCTION = """
CREATE FUNCTION guard_audit_log_tenant() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    context_tenant uuid := NULLIF(current_setting('app.current_tenant_id', true), '')::uuid;
BEGIN
    -- The refusal RLS's WITH CHECK would give after the BEFORE triggers, given before the chain
    -- trigger locks a head: same SQLSTATE, same message, so the two can't be told apart.
    IF (context_tenant IS NULL AND row_security_active('public.audit_logs'))
       OR (context_tenant IS NOT NULL AND NEW.tenant_id IS DISTINCT FROM context_tenant) THEN
        RAISE EXCEPTION 'new row violates row-level security policy for table "audit_logs"'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$
"""

CHAIN_TRIGGER_FUNCTION = f"""
CREATE FUNCTION chain_audit_log() RETURNS trigger
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

BACKFILL = f"""
DO $$
DECLARE
    entry public.audit_logs%ROWTYPE;
    current_tenant uuid;
    seq bigint;
    previous bytea;
BEGIN
    FOR entry IN SELECT * FROM public.audit_logs ORDER BY tenant_id, created_at, id LOOP
        IF current_tenant IS DISTINCT FROM entry.tenant_id THEN
            IF current_tenant IS NOT NULL THEN
                INSERT INTO public.audit_chain_heads VALUES (current_tenant, seq, previous);
            END IF;
            current_tenant := entry.tenant_id;
            seq := 0;
            previous := {GENESIS_HASH};
        END IF;
        seq := seq + 1;
        entry.chain_seq := seq;
        entry.prev_hash := previous;
        entry.row_hash := public.audit_log_row_hash(entry);
        UPDATE public.audit_logs
        SET chain_seq = entry.chain_seq, prev_hash = entry.prev_hash, row_hash = entry.row_hash
        WHERE id = entry.id;
        previous := entry.row_hash;
    END LOOP;
    IF current_tenant IS NOT NULL THEN
        INSERT INTO public.audit_chain_heads VALUES (current_tenant, seq, previous);
    END IF;
END $$
"""


def upgrade() -> None:
    op.add_column(
        "audit_logs",
        sa.Column(
            "chain_seq",
            sa.BigInteger(),
            nullable=True,
            comment="Position in the tenant's hash chain (1, 2, …), set by a trigger.",
        ),
    )
    op.add_column(
        "audit_logs",
        sa.Column(
            "prev_hash",
            sa.LargeBinary(),
            nullable=True,
            comment="row_hash of the previous row in the tenant's chain (zeros for the first).",
        ),
    )
    op.add_column(
        "audit_logs",
        sa.Column(
            "row_hash",
            sa.LargeBinary(),
            nullable=True,
            comment="SHA-256 of the row's canonical encoding (docs/AUDIT_INTEGRITY.md).",
        ),
    )
    op.create_table(
        "audit_chain_heads",
        sa.Column(
            "tenant_id",
            sa.Uuid(),
            nullable=False,
            comment="Tenant whose chain this is the head of.",
        ),
        sa.Column(
            "last_seq", sa.BigInteger(), nullable=False, comment="chain_seq of the newest row."
        ),
        sa.Column(
            "last_hash", sa.LargeBinary(), nullable=False, comment="row_hash of the newest row."
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audit_chain_heads_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_audit_chain_heads")),
        comment="Newest link of each tenant's audit chain; written only by the chain trigger.",
    )
    op.execute(NETSTRING_FUNCTION)
    op.execute(ROW_HASH_FUNCTION)
    for function in ("audit_netstring(text)", "audit_log_row_hash(audit_logs)"):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")

    # The owner is subject to FORCE RLS and the append-only triggers: lift both while
    # chaining the existing rows (ALTER TABLE holds an exclusive lock, so nobody else writes).
    op.execute("ALTER TABLE audit_logs NO FORCE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE audit_logs DISABLE TRIGGER prevent_audit_log_update")
    op.execute(BACKFILL)
    op.execute("ALTER TABLE audit_logs ENABLE TRIGGER prevent_audit_log_update")
    op.execute("ALTER TABLE audit_logs FORCE ROW LEVEL SECURITY")

    for column in ("chain_seq", "prev_hash", "row_hash"):
        op.alter_column("audit_logs", column, nullable=False)
    op.create_unique_constraint(
        op.f("uq_audit_logs_tenant_id_chain_seq"), "audit_logs", ["tenant_id", "chain_seq"]
    )

    op.execute(TENANT_GUARD_FUNCTION)
    op.execute(CHAIN_TRIGGER_FUNCTION)
    for function in ("guard_audit_log_tenant()", "chain_audit_log()"):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    # BEFORE triggers fire in name order: `zz_` makes these the last two, the guard first
    # (`zz_a…` < `zz_c…`), then the chain, which so hashes the final row.
    op.execute(
        "CREATE TRIGGER zz_audit_log_tenant_guard BEFORE INSERT ON audit_logs "
        "FOR EACH ROW EXECUTE FUNCTION guard_audit_log_tenant()"
    )
    op.execute(
        "CREATE TRIGGER zz_chain_audit_log BEFORE INSERT ON audit_logs "
        "FOR EACH ROW EXECUTE FUNCTION chain_audit_log()"
    )

    # Only the trigger (running as the owner) touches the heads; app_runtime gets nothing,
    # app_admin (BYPASSRLS) may read them to check the chain's tail.
    op.execute("ALTER TABLE audit_chain_heads ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE audit_chain_heads FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY audit_chain_head_owner_policy ON audit_chain_heads AS PERMISSIVE "
        "FOR ALL TO CURRENT_USER USING (true) WITH CHECK (true)"
    )
    op.execute("REVOKE ALL ON audit_chain_heads FROM PUBLIC")
    op.execute("GRANT SELECT ON audit_chain_heads TO app_admin")


def downgrade() -> None:
    op.execute("DROP TRIGGER zz_chain_audit_log ON audit_logs")
    op.execute("DROP TRIGGER zz_audit_log_tenant_guard ON audit_logs")
    op.execute("DROP FUNCTION chain_audit_log()")
    op.execute("DROP FUNCTION guard_audit_log_tenant()")
    op.drop_table("audit_chain_heads")
    op.drop_constraint(op.f("uq_audit_logs_tenant_id_chain_seq"), "audit_logs", type_="unique")
    op.execute("DROP FUNCTION audit_log_row_hash(audit_logs)")
    op.execute("DROP FUNCTION audit_netstring(text)")
    for column in ("row_hash", "prev_hash", "chain_seq"):
        op.drop_column("audit_logs", column)
