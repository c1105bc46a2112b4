"""`verify-audit` and `audit-anchor`, run as a process against a database of their own, agree
with the service; a broken chain or bad input exits non-zero with one clear line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from app.cli.main import cli
from app.core.config import BACKEND_DIR, get_settings
from app.database.session import admin_transaction
from app.schemas.audit_integrity import AuditChainVerification
from app.services import audit_anchor as audit_anchor_service
from app.services import audit_integrity as audit_integrity_service
from tests.conftest import MigratedDatabase
from tests.own_database import database_fixtures
from tests.test_audit.conftest import (
    attacker,
    new_signing_key,
    seed_chain,
)

# A database of its own: these tests verify (and finally break) every tenant in it.
(
    cli_database_set,
    cli_migrated_db,
    cli_settings,
    cli_runtime_engine,
    cli_runtime_sessions,
    cli_owner_engine,
    cli_admin_sessions,
    cli_database,
) = database_fixtures("cli_")


@pytest.fixture(scope="module")
def signing_key_b64() -> str:
    """AUDIT_ANCHOR_SIGNING_KEY for the CLI processes."""
    return new_signing_key()[1]


def _environment(database: MigratedDatabase, signing_key: str | None) -> dict[str, str | None]:
    """DATABASE_URL set to the database's owner login; the anchor keys only when given."""
    unset: dict[str, str | None] = {
        key: None for key in os.environ if key.startswith(("AUDIT_ANCHOR_", "DATABASE_URL"))
    }
    return {
        **unset,
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": database.owner_url.render_as_string(hide_password=False),
        "AUDIT_ANCHOR_SIGNING_KEY": signing_key,
    }


async def run_cli(
    database: MigratedDatabase, *args: str, signing_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m app <args>`, in-process (typer's CliRunner, in a thread so that the command
    can run its own event loop): a subprocess pays ~2 s of imports per command, and
    `run_cli_as_a_process` holds the process boundary."""
    get_settings.cache_clear()
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, list(args), env=_environment(database, signing_key)
        )
    finally:
        get_settings.cache_clear()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def run_cli_as_a_process(
    database: MigratedDatabase, *args: str, signing_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m app <args>` in a real process."""
    env = dict(os.environ)
    for key, value in _environment(database, signing_key).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _service_report(
    sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID | None = None
) -> AuditChainVerification:
    async with admin_transaction(sessions) as session:
        return await audit_integrity_service.verify_chain(session, tenant_id=tenant_id)


async def test_verify_and_anchor_agree_with_the_service_then_catch_truncation(
    cli_migrated_db: MigratedDatabase,
    cli_admin_sessions: async_sessionmaker[AsyncSession],
    signing_key_b64: str,
    tmp_path: Path,
) -> None:
    tenant_a, _ = await seed_chain(cli_admin_sessions, 4)
    tenant_b, _ = await seed_chain(cli_admin_sessions, 2)
    service = await _service_report(cli_admin_sessions)

    verified = run_cli_as_a_process(cli_migrated_db, "verify-audit")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(
        f"audit chain OK: {service.tenant_count} tenants, {service.row_count} rows"
    )
    for status in service.tenants:
        line = f"tenant {status.tenant_id}: {status.row_count} rows, head {status.head_seq} "
        assert f"{line}{status.head_hash}" in verified.stdout

    anchor_file = tmp_path / "anchor.json"
    anchored = await run_cli(
        cli_migrated_db, "audit-anchor", "--output", str(anchor_file), signing_key=signing_key_b64
    )
    assert anchored.returncode == 0, anchored.stderr
    heads = {
        uuid.UUID(head["tenant_id"]): (head["chain_seq"], head["row_hash"])
        for head in json.loads(anchor_file.read_text())["anchor"]["heads"]
    }
    assert heads == {
        status.tenant_id: (status.head_seq, status.head_hash) for status in service.tenants
    }

    checked = await run_cli(
        cli_migrated_db, "verify-audit", "--anchor", str(anchor_file), signing_key=signing_key_b64
    )
    assert checked.returncode == 0, checked.stderr
    assert "anchor of" in checked.stdout

    # Truncate tenant a's tail the careful way (chain head edited to match).
    with attacker(cli_migrated_db.superuser_url) as conn:
        conn.execute("DELETE FROM audit_logs WHERE tenant_id = %s AND chain_seq > 2", (tenant_a,))
        conn.execute(
            "UPDATE audit_chain_heads SET last_seq = 2, last_hash = entry.row_hash"
            " FROM audit_logs entry WHERE entry.tenant_id = %(t)s AND entry.chain_seq = 2"
            " AND audit_chain_heads.tenant_id = %(t)s",
            {"t": tenant_a},
        )
    # Consistent without the anchor.
    assert (await run_cli(cli_migrated_db, "verify-audit")).returncode == 0
    broken = await run_cli(
        cli_migrated_db, "verify-audit", "--anchor", str(anchor_file), signing_key=signing_key_b64
    )
    assert broken.returncode == 1
    assert broken.stdout == ""
    assert broken.stderr.count("\n") == 1
    assert broken.stderr.startswith(f"audit chain BROKEN: tenant {tenant_a}, sequence 4:")
    assert "anchor_mismatch" in broken.stderr
    # Tenant b alone is still fine against the same anchor.
    only_b = await run_cli(
        cli_migrated_db,
        "verify-audit",
        "--tenant",
        str(tenant_b),
        "--anchor",
        str(anchor_file),
        signing_key=signing_key_b64,
    )
    assert only_b.returncode == 0, only_b.stderr


async def test_broken_row_exits_one_with_the_location_and_is_not_anchored(
    cli_migrated_db: MigratedDatabase,
    cli_admin_sessions: async_sessionmaker[AsyncSession],
    signing_key_b64: str,
) -> None:
    tenant_id, rows = await seed_chain(cli_admin_sessions, 3)
    with attacker(cli_migrated_db.superuser_url) as conn:
        conn.execute("UPDATE audit_logs SET action = 'document.view' WHERE id = %s", (rows[1],))

    result = await run_cli(cli_migrated_db, "verify-audit", "--tenant", str(tenant_id))
    service = (await _service_report(cli_admin_sessions, tenant_id)).first_break

    assert result.returncode == 1
    assert service is not None
    assert result.stderr == (
        f"audit chain BROKEN: tenant {tenant_id}, sequence 2, row {rows[1]}: "
        f"row_hash_mismatch: {service.detail}\n"
    )
    refused = await run_cli(cli_migrated_db, "audit-anchor", signing_key=signing_key_b64)
    assert refused.returncode == 1
    assert refused.stderr.startswith("audit chain BROKEN: tenant ")


async def test_forged_anchor_and_bad_input_are_refused_with_one_line(
    cli_migrated_db: MigratedDatabase,
    cli_admin_sessions: async_sessionmaker[AsyncSession],
    signing_key_b64: str,
    tmp_path: Path,
) -> None:
    tenant_id, _ = await seed_chain(cli_admin_sessions, 2)
    # A well-formed anchor of this tenant, signed with a key that is not the configured one.
    forger_key, _ = new_signing_key()
    anchor = audit_anchor_service.anchor_from_verification(
        await _service_report(cli_admin_sessions, tenant_id)
    )
    anchor_file = tmp_path / "anchor.json"
    anchor_file.write_text(audit_anchor_service.sign_anchor(anchor, forger_key).model_dump_json())

    forged = await run_cli(
        cli_migrated_db,
        "verify-audit",
        "--tenant",
        str(tenant_id),
        "--anchor",
        str(anchor_file),
        signing_key=signing_key_b64,
    )
    assert forged.returncode == 1
    assert forged.stderr.startswith("anchor REJECTED:")
    assert "does not verify" in forged.stderr
    assert forged.stderr.count("\n") == 1

    cases = [
        (["verify-audit", "--tenant", "not-a-uuid"], "error: --tenant must be a UUID"),
        (["verify-audit", "--anchor", str(tmp_path / "missing.json")], "error: --anchor: cannot"),
        (["verify-audit", "--anchor", str(anchor_file)], "error: AUDIT_ANCHOR_VERIFY_KEY"),
        (["audit-anchor"], "error: AUDIT_ANCHOR_SIGNING_KEY is not set"),
    ]
    for args, message in cases:
        result = await run_cli(cli_migrated_db, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith(message), result.stderr
        assert result.stderr.count("\n") == 1

    bad_key = await run_cli(cli_migrated_db, "verify-audit", signing_key="bm90IGEga2V5")
    assert bad_key.returncode == 2
    assert "AUDIT_ANCHOR_SIGNING_KEY" in bad_key.stderr
