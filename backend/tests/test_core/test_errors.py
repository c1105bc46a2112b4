"""Unhandled errors: a generic JSON 500 that still carries the request id, never a traceback."""

from __future__ import annotations

import httpx

from app.core.config import Settings
from app.main import create_app
from tests.test_api.test_phi_headers import assert_phi_headers


async def test_unhandled_error_is_a_json_500_with_the_request_id(settings: Settings) -> None:
    app = create_app(settings, database=None)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: SELECT * FROM tenants")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom", headers={"X-Request-ID": "req-boom-000001"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-boom-000001"
    assert_phi_headers(response)  # answered outside the middleware that adds them elsewhere
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal error",
            "request_id": "req-boom-000001",
        }
    }
    assert "secret internals" not in response.text
