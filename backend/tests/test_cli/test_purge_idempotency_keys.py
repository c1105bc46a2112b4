"""`python -m app purge-idempotency-keys` deletes expired records of all tenants, keeps the rest."""

from __future__ import annotations

import json
import uuid

import psycopg

from testkit import database_harness as harness
from tests.conftest import MakeCaller, MigratedDatabase
from tests.test_cli.conftest import RunCli

_INSERT = (
    "INSERT INTO idempotency_keys (tenant_id, user_id, idempotency_key, request_fingerprint,"
    " response_status, response_headers, response_body, expires_at)"
    " VALUES (%s, %s, %s, sha256('request'), 201, '{}', '', now() + %s::interval)"
)


async def test_purge_deletes_only_expired_records(
    run_cli: RunCli, make_caller: MakeCaller, migrated_db: MigratedDatabase
) -> None:
    callers = [await make_caller(), await make_caller()]
    expired = [f"expired-{uuid.uuid4()}" for _ in callers]
    fresh = [f"fresh-{uuid.uuid4()}" for _ in callers]
    with psycopg.connect(harness.libpq(migrated_db.superuser_url), autocommit=True) as conn:
        for caller, old, new in zip(callers, expired, fresh, strict=True):
            ids = (caller.tenant.id, caller.user.id)
            conn.execute(_INSERT, (*ids, old, "-1 second"))
            conn.execute(_INSERT, (*ids, new, "1 hour"))
    result = await run_cli("purge-idempotency-keys", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["deleted"] >= 2
    with psycopg.connect(harness.libpq(migrated_db.superuser_url), autocommit=True) as conn:
        left = conn.execute(
            "SELECT idempotency_key FROM idempotency_keys WHERE idempotency_key = ANY(%s)",
            (expired + fresh,),
        ).fetchall()
    assert sorted(row[0] for row in left) == sorted(fresh)
