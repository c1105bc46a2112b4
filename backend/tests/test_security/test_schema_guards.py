"""Schema-wide guards: no cascades into audit or across tenants, ids reveal nothing, no oracles."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.test_security.conftest import TENANT_TABLES

_SCHEMA = "public"


# procrastinate's job queue (docs/INGEST.md) is the library's own schema: bigint ids from
# sequences and its own cascades between its tables. Its rows hold only ids, and app_runtime
# reaches them only through two functions, so no tenant can see its counters.
THIRD_PARTY_TABLES = "procrastinate\\_%"
# Sequences that number no key, each with why. caller_change_seq numbers changes to tenants and
# users in commit order for the caller cache (migration 3c9e1f5a7b20): never a column default,
# never sent to a client; app_runtime may only read it (checked below), which tells it how many
# such changes the whole platform made, less than pg_current_wal_lsn() (open to every role)
# tells of all writes.
NON_KEY_SEQUENCES = ("caller_change_seq",)
# Deletes that may cascade, each with why: derived rows of the same tenant only.
DERIVED_CASCADES = {
    # A composite (tenant_id, document_id) key: a document's own chunks, nobody else's; they
    # are derived from its content (re-made by re-ingesting) and never audited on their own.
    "fk_document_chunks_tenant_id_document_id_documents": ("document_chunks", "c", "a"),
}


def test_no_cascading_or_nulling_foreign_keys(superuser: psycopg.Connection[Any]) -> None:
    """Deleting or re-keying a parent never rewrites audit rows or another tenant's rows."""
    rows = superuser.execute(
        """
        SELECT conname, conrelid::regclass::text, confdeltype, confupdtype
        FROM pg_constraint
        WHERE contype = 'f' AND connamespace = %s::regnamespace
          AND conrelid::regclass::text NOT LIKE %s
        """,
        (_SCHEMA, THIRD_PARTY_TABLES),
    ).fetchall()
    assert {row[1] for row in rows} >= {"users", "documents", "audit_logs"}
    # a = NO ACTION, r = RESTRICT; c = CASCADE, n = SET NULL, d = SET DEFAULT are refused.
    cascading = {
        row[0]: tuple(row[1:])
        for row in rows
        if row[2] not in ("a", "r") or row[3] not in ("a", "r")
    }
    assert cascading == DERIVED_CASCADES


def test_foreign_keys_between_tenant_tables_include_tenant_id(
    superuser: psycopg.Connection[Any],
) -> None:
    """A reference between tenant tables is composite (tenant_id, …): same tenant only."""
    rows = superuser.execute(
        """
        SELECT c.conname,
               ARRAY(SELECT attname FROM pg_attribute
                     WHERE attrelid = c.conrelid AND attnum = ANY(c.conkey)) AS columns,
               ARRAY(SELECT attname FROM pg_attribute
                     WHERE attrelid = c.confrelid AND attnum = ANY(c.confkey)) AS referenced
        FROM pg_constraint c
        WHERE c.contype = 'f' AND c.connamespace = %s::regnamespace
          AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = c.confrelid
                      AND attname = 'tenant_id' AND NOT attisdropped)
        """,
        (_SCHEMA,),
    ).fetchall()
    names = {row[0] for row in rows}
    assert "fk_documents_tenant_id_user_id_users" in names
    # Audit rows outlive the users they name (offboarding and retention erase users), so the
    # audit log has no foreign key to users at all (migration 7a3e9b2c1d48).
    assert not any(name.startswith("fk_audit_logs_") and "user" in name for name in names)
    single_tenant_blind = [
        row for row in rows if "tenant_id" not in row[1] or "tenant_id" not in row[2]
    ]
    assert single_tenant_blind == []


def test_ids_are_random_uuids_and_no_sequences_exist(superuser: psycopg.Connection[Any]) -> None:
    """Keys are gen_random_uuid() UUIDs; no sequence or identity reveals insert rates."""
    keys = superuser.execute(
        """
        SELECT table_name, data_type, column_default
        FROM information_schema.columns
        WHERE table_schema = %s AND column_name = 'id' AND table_name NOT LIKE %s
        """,
        (_SCHEMA, THIRD_PARTY_TABLES),
    ).fetchall()
    assert {key[0] for key in keys} >= set(TENANT_TABLES)
    assert [key for key in keys if key[1:] != ("uuid", "gen_random_uuid()")] == []
    counters = superuser.execute(
        """
        SELECT table_name, column_name FROM information_schema.columns
        WHERE table_schema = %s AND (is_identity = 'YES' OR column_default LIKE 'nextval(%%')
          AND table_name NOT LIKE %s
        """,
        (_SCHEMA, THIRD_PARTY_TABLES),
    ).fetchall()
    assert counters == []
    sequences = superuser.execute(
        "SELECT sequencename FROM pg_sequences WHERE schemaname = %s AND sequencename NOT LIKE %s"
        " AND sequencename <> ALL(%s)",
        (_SCHEMA, THIRD_PARTY_TABLES, list(NON_KEY_SEQUENCES)),
    ).fetchall()
    assert sequences == []
    for sequence in NON_KEY_SEQUENCES:
        # Read only: the runtime role can neither draw (nextval) nor set a number.
        can_draw, can_set = superuser.execute(
            "SELECT has_sequence_privilege('app_runtime', %s, 'USAGE'),"
            " has_sequence_privilege('app_runtime', %s, 'UPDATE')",
            (f"{_SCHEMA}.{sequence}", f"{_SCHEMA}.{sequence}"),
        ).fetchone() or (True, True)
        assert (can_draw, can_set) == (False, False), sequence


def test_runtime_role_cannot_write_server_generated_or_tenant_columns(
    superuser: psycopg.Connection[Any],
) -> None:
    """ids and timestamps are the database's; tenant_id and user_id can't be changed after insert.

    Choosing an id would be an existence oracle for other tenants' rows (unique violation, or
    ON CONFLICT's RLS error); choosing created_at would back-date audit rows.
    """
    writable = superuser.execute(
        """
        SELECT table_name, column_name, privilege
        FROM information_schema.columns,
             LATERAL unnest(ARRAY['INSERT', 'UPDATE']) AS privilege
        WHERE table_schema = %s AND table_name = ANY(%s)
          AND has_column_privilege('app_runtime', format('%%I.%%I', table_schema, table_name),
                                   column_name, privilege)
          AND (column_name IN ('id', 'created_at', 'updated_at')
               OR (privilege = 'UPDATE' AND column_name IN ('tenant_id', 'user_id')))
        """,
        (_SCHEMA, list(TENANT_TABLES)),
    ).fetchall()
    assert writable == []


def test_unique_indexes_on_tenant_tables_are_scoped_by_tenant(
    superuser: psycopg.Connection[Any],
) -> None:
    """A global unique key would answer "does this value exist in another tenant?" on insert.

    The only global ones allowed are primary keys on ids that app_runtime can never supply.
    """
    global_unique = superuser.execute(
        """
        SELECT i.indexrelid::regclass::text
        FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        WHERE t.relnamespace = %s::regnamespace AND t.relname = ANY(%s)
          AND t.relname <> 'tenants' AND i.indisunique AND NOT i.indisprimary
          AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.oid
                          AND a.attname = 'tenant_id' AND a.attnum = ANY(i.indkey))
        """,
        (_SCHEMA, list(TENANT_TABLES)),
    ).fetchall()
    assert global_unique == []
