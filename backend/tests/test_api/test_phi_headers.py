"""Every API response, success or error, tells caches not to keep it and browsers not to sniff.

(An unhandled 500 carries them too: tests/test_core/test_errors.py.)
"""

from __future__ import annotations

import httpx

from tests.test_api.conftest import API, Api, Tenants, document_body

PHI_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


def assert_phi_headers(response: httpx.Response) -> None:
    """The response carries exactly the PHI headers' values (one each, not appended to)."""
    for name, value in PHI_HEADERS.items():
        assert response.headers.get_list(name) == [value], (response.status_code, name)


async def test_successes_and_errors_carry_the_phi_headers(api: Api, tenants: Tenants) -> None:
    created = await api.client.post(
        f"{API}/documents", json=document_body(), headers=tenants.admin.headers
    )
    assert created.status_code == 201
    responses = [
        created,
        await api.client.get(
            f"{API}/documents/{created.json()['id']}", headers=tenants.admin.headers
        ),
        await api.client.get(f"{API}/me"),  # 401
        await api.client.get(f"{API}/no-such-route", headers=tenants.admin.headers),  # 404
        await api.client.post(f"{API}/documents", json={}, headers=tenants.admin.headers),  # 422
        await api.client.post(  # 413, answered before the body is parsed
            f"{API}/documents",
            content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
            headers={**tenants.admin.headers, "Content-Type": "application/json"},
        ),
        await api.client.get(f"{API}/health/live"),
        await api.client.get("/openapi.json"),
    ]
    assert [r.status_code for r in responses] == [201, 200, 401, 404, 422, 413, 200, 200]
    for response in responses:
        assert_phi_headers(response)
