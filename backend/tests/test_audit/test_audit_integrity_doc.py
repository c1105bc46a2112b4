"""docs/AUDIT_INTEGRITY.md: its script is the shipped one and works, its test vector is right."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import BACKEND_DIR
from app.database.session import tenant_transaction
from app.services import audit_integrity as audit_integrity_service
from testkit import database_harness as harness
from tests.conftest import MigratedDatabase
from tests.test_audit.conftest import attacker, seed_chain

DOC = BACKEND_DIR / "docs" / "AUDIT_INTEGRITY.md"
SCRIPT = BACKEND_DIR / "scripts" / "verify_audit_chain.py"

VECTOR_FIELDS = {
    "tenant_id": "11111111-1111-1111-1111-111111111111",
    "chain_seq": "1",
    "prev_hash": "0" * 64,
    "id": "22222222-2222-2222-2222-222222222222",
    "created_at": "2025-01-02T03:04:05.678901Z",
    "user_id": None,
    "action": "document.create",
    "resource_type": "document",
    "resource_id": "33333333-3333-3333-3333-333333333333",
    "ip_address": "203.0.113.7/32",
    "user_agent": "curl/8.5",
    "metadata": '{"fields": ["filename"], "request_id": "r-1"}',
}


def _doc_block(language: str, starting_with: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    matching = [block for block in blocks if block.startswith(starting_with)]
    assert len(matching) == 1, f"expected one ```{language} block starting {starting_with!r}"
    return str(matching[0])


def _run_script(url: str, tenant_id: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), url, str(tenant_id)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_documented_script_is_the_shipped_script() -> None:
    assert _doc_block("python", '"""Verify one tenant') == SCRIPT.read_text()


async def test_the_test_vector_matches_python_and_the_database(
    migrated_db: MigratedDatabase,
) -> None:
    documented_encoding = _doc_block("text", "13:audit_logs.v1,").strip()
    documented_hash = re.search(r"hashes to `([0-9a-f]{64})`", DOC.read_text())
    assert documented_hash is not None
    fields = list(VECTOR_FIELDS.values())

    python_encoding = b"".join(
        audit_integrity_service.netstring(value)
        for value in [audit_integrity_service.ENCODING_VERSION, *fields]
    )
    assert python_encoding.decode() == documented_encoding
    assert audit_integrity_service.row_hash(fields).hex() == documented_hash.group(1)

    record = {
        **VECTOR_FIELDS,
        "prev_hash": "\\x" + "0" * 64,
        "ip_address": "203.0.113.7",
        "metadata": json.loads(VECTOR_FIELDS["metadata"] or ""),
    }
    with attacker(migrated_db.superuser_url) as conn:
        database_hash = conn.execute(
            "SELECT encode(audit_log_row_hash(jsonb_populate_record(NULL::audit_logs, %s)), 'hex')",
            (json.dumps(record),),
        ).fetchone()
        conn.rollback()
    assert database_hash is not None
    assert database_hash[0] == documented_hash.group(1)


async def test_script_verifies_a_chain_as_the_runtime_role_and_agrees_with_the_service(
    migrated_db: MigratedDatabase,
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id, _ = await seed_chain(admin_sessions, 4)
    async with tenant_transaction(runtime_sessions, tenant_id) as session:
        report = await audit_integrity_service.verify_chain(session, tenant_id=tenant_id)

    result = _run_script(harness.libpq(migrated_db.runtime_url), tenant_id)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"OK tenant {tenant_id}: 4 rows, head {report.tenants[0].head_hash}\n"


async def test_script_locates_a_tampered_row(
    tamper_migrated_db: MigratedDatabase,
    tamper_admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id, rows = await seed_chain(tamper_admin_sessions, 4)
    with attacker(tamper_migrated_db.superuser_url) as conn:
        conn.execute(
            "UPDATE audit_logs SET metadata = metadata || '{\"fields\": []}' WHERE id = %s",
            (rows[2],),
        )

    result = _run_script(harness.libpq(tamper_migrated_db.superuser_url), tenant_id)

    assert result.returncode == 1
    assert result.stdout == (
        f"BROKEN tenant {tenant_id} sequence 3 row {rows[2]}: "
        "the row's contents do not match its row_hash\n"
    )
