"""Verify one tenant's audit hash chain without the application: psycopg and hashlib only.

Usage: python verify_audit_chain.py POSTGRES_DSN TENANT_ID
Any login that can read the tenant's audit rows works: app_runtime (the script sets the tenant
context), the provisioning role, or a read-only auditor role with BYPASSRLS.
Exit status 0: the chain verifies (the head is printed; compare it with your anchor).
Exit status 1: the chain is broken; the first broken link is printed.
"""

import hashlib
import sys

import psycopg

QUERY = """
SELECT id, chain_seq, prev_hash, row_hash,
       tenant_id::text, chain_seq::text, encode(prev_hash, 'hex'), id::text,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       user_id::text, action, resource_type, resource_id::text,
       host(ip_address) || '/' || masklen(ip_address), user_agent, metadata::text
FROM audit_logs WHERE tenant_id = %s ORDER BY audit_logs.chain_seq, audit_logs.id
"""


def netstring(value: str | None) -> bytes:
    """`<byte length>:<UTF-8 bytes>,`, or `-,` for NULL."""
    if value is None:
        return b"-,"
    raw = value.encode("utf-8")
    return b"%d:%s," % (len(raw), raw)


def verify(dsn: str, tenant_id: str) -> int:
    """Walk the chain in sequence order; print OK and the head, or the first broken link."""
    expected_seq, expected_prev = 1, bytes(32)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT set_config('app.current_tenant_id', %s, true)", (tenant_id,))
        with conn.cursor(name="audit_chain") as rows:
            rows.execute(QUERY, (tenant_id,))
            for row_id, seq, prev_hash, row_hash, *fields in rows:
                encoding = netstring("audit_logs.v1") + b"".join(map(netstring, fields))
                if seq != expected_seq:
                    problem = f"sequence {seq} where {expected_seq} was expected"
                elif prev_hash != expected_prev:
                    problem = "prev_hash is not the previous row's hash"
                elif hashlib.sha256(encoding).digest() != row_hash:
                    problem = "the row's contents do not match its row_hash"
                else:
                    expected_seq, expected_prev = seq + 1, row_hash
                    continue
                print(f"BROKEN tenant {tenant_id} sequence {seq} row {row_id}: {problem}")
                return 1
    print(f"OK tenant {tenant_id}: {expected_seq - 1} rows, head {expected_prev.hex()}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(verify(sys.argv[1], sys.argv[2]))
