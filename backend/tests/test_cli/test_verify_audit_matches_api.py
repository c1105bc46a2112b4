"""The admin CLI's verify-audit and the API's /audit-logs/verify report the same chain head."""

from __future__ import annotations

import json

import httpx

from tests.conftest import MakeCaller
from tests.test_cli.conftest import RunCli


async def test_api_and_cli_report_the_same_head(
    client: httpx.AsyncClient, make_caller: MakeCaller, run_cli: RunCli
) -> None:
    admin = await make_caller(role="admin")
    await client.post(
        "/api/v1/documents",
        headers=admin.headers,
        json={
            "filename": "a.pdf",
            "content_type": "application/pdf",
            "size_bytes": 1,
            "s3_bucket": "b",
            "s3_key": "k",
        },
    )
    api = (await client.get("/api/v1/audit-logs/verify", headers=admin.headers)).json()
    cli = await run_cli("verify-audit", "--tenant", str(admin.tenant.id))
    assert cli.returncode == 0, cli.stderr
    head = api["tenants"][0]
    assert f"tenant {admin.tenant.id}: {head['row_count']} rows, head {head['head_seq']}" in (
        cli.stdout
    )
    assert head["head_hash"] in cli.stdout
    assert json.dumps(api["ok"]) == "true"
