"""Emails over HTTP: unique per tenant by their normalised form (201 across tenants, 409 within).

The JWT cases live in `tests/test_auth/test_bearer_tokens.py` (see docs/SECURITY.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.test_security.http_world import World, add_user

# Emails are unique per tenant, by their normalised form -----------------------------------


async def test_email_existing_only_in_another_tenant_is_201(
    client: httpx.AsyncClient, world: World
) -> None:
    email = f"shared-{uuid.uuid4().hex[:6]}@example.org"
    assert (await add_user(client, world.b.admin, email)).status_code == 201
    response = await add_user(client, world.a.admin, email)
    assert response.status_code == 201, response.text
    assert response.json()["tenant_id"] == str(world.a.tenant_id)


@pytest.mark.parametrize(
    "variant",
    [
        lambda local: f"{local.upper()}@EXAMPLE.ORG",
        lambda local: f"  {local}@example.org ",
        # Fullwidth letters: NFKC folds them to ASCII.
        lambda local: (
            f"{local[0].translate({ord(c): ord(c) + 0xFEE0 for c in 'abcdef'})}"
            f"{local[1:]}@example.org"
        ),
    ],
    ids=["other case", "surrounding spaces", "fullwidth (NFKC)"],
)
async def test_same_email_in_another_case_or_unicode_form_is_409(
    variant: Callable[[str], str], client: httpx.AsyncClient, world: World
) -> None:
    local = "a" + uuid.uuid4().hex[:6]
    first = await add_user(client, world.a.admin, f"{local}@example.org")
    assert first.status_code == 201, first.text
    again = await add_user(client, world.a.admin, variant(local))
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "conflict"
