"""GET /api/v1/audit-logs/verify: admins verify their tenant's chain; the CLI agrees."""

from __future__ import annotations

import httpx

from tests.conftest import MakeCaller


async def test_admin_verifies_only_their_tenant_and_members_are_refused(
    client: httpx.AsyncClient, make_caller: MakeCaller
) -> None:
    admin = await make_caller(role="admin")
    member = await make_caller(role="member", tenant=admin.tenant)
    other = await make_caller(role="admin")
    for caller in (admin, other):
        created = await client.post(
            "/api/v1/documents",
            headers=caller.headers,
            json={
                "filename": "a.pdf",
                "content_type": "application/pdf",
                "size_bytes": 1,
                "s3_bucket": "b",
                "s3_key": "k",
            },
        )
        assert created.status_code == 201

    response = await client.get("/api/v1/audit-logs/verify", headers=admin.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True
    assert [t["tenant_id"] for t in body["tenants"]] == [str(admin.tenant.id)]
    assert body["tenants"][0]["row_count"] >= 1

    refused = await client.get("/api/v1/audit-logs/verify", headers=member.headers)
    assert refused.status_code == 403
