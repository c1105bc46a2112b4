"""Users over HTTP: members read, admins add, delete and restore; each change audited once."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.services import users as users_service
from tests.test_api.conftest import API, Api, Tenants, error_without_request_id

USERS = f"{API}/users"


async def _create(api: Api, tenants: Tenants, **body: Any) -> dict[str, Any]:
    response = await api.client.post(USERS, json=body, headers=tenants.admin.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_members_list_and_read_their_tenants_users(api: Api, tenants: Tenants) -> None:
    listed = await api.all_pages(USERS, tenants.member)
    assert [item["id"] for item in listed] == [
        str(tenants.member.user.id),
        str(tenants.admin.user.id),
    ]
    assert {item["tenant_id"] for item in listed} == {str(tenants.admin.tenant.id)}
    response = await api.client.get(
        f"{USERS}/{tenants.admin.user.id}", headers=tenants.member.headers
    )
    assert response.status_code == 200, response.text
    assert response.json() == listed[1]
    assert response.json()["role"] == "admin"


async def test_admin_adds_a_user_and_it_is_audited(api: Api, tenants: Tenants) -> None:
    before = await api.counts()
    response = await api.client.post(
        USERS,
        json={
            "email": "  Dr.Jones@Clinic.Example ",
            "external_idp_id": "idp|jones",
            "full_name": "Ada Jones",
            "role": "member",
        },
        headers={**tenants.admin.headers, "User-Agent": "admin-console/1.0"},
    )
    assert response.status_code == 201, response.text
    user = response.json()
    assert user["email"] == "dr.jones@clinic.example"
    assert user["tenant_id"] == str(tenants.admin.tenant.id)
    assert (user["role"], user["full_name"], user["deleted_at"]) == ("member", "Ada Jones", None)
    after = await api.counts()
    assert (after.users, after.audit_logs) == (before.users + 1, before.audit_logs + 1)
    [entry] = await api.audit_rows(tenants.admin.tenant.id, resource_id=uuid.UUID(user["id"]))
    assert (entry.action, entry.resource_type) == ("user.create", "user")
    assert entry.user_id == tenants.admin.user.id
    assert entry.user_agent == "admin-console/1.0"
    assert str(entry.ip_address) == "127.0.0.1"
    assert entry.metadata_["changed"] == ["email", "external_idp_id", "full_name", "role"]
    assert entry.metadata_["request_id"] == response.headers["x-request-id"]
    assert "jones" not in str(entry.metadata_).lower()


@pytest.mark.parametrize(
    "duplicate",
    [
        "taken@example.org",
        "TAKEN@Example.ORG",
        "  taken@example.org",
        "\uff54\uff41\uff4b\uff45\uff4e@example.org",
    ],  # fullwidth "taken"
    ids=["same", "other case", "padded", "fullwidth unicode"],
)
async def test_duplicate_active_email_is_a_conflict_and_writes_nothing(
    api: Api, tenants: Tenants, duplicate: str
) -> None:
    await _create(api, tenants, email="taken@example.org")
    before = await api.counts()
    response = await api.client.post(
        USERS, json={"email": duplicate}, headers=tenants.admin.headers
    )
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "conflict"
    assert "email" in response.json()["error"]["message"]
    assert await api.counts() == before
    # The same address is free in another tenant.
    elsewhere = await api.client.post(
        USERS, json={"email": duplicate}, headers=tenants.other.headers
    )
    assert elsewhere.status_code == 201, elsewhere.text


async def test_a_lost_race_on_the_unique_index_is_a_conflict_with_nothing_written(
    api: Api, tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _create(api, tenants, email="raced@example.org")
    before = await api.counts()

    async def check_passes(*_args: Any, **_kwargs: Any) -> None:
        # As if a concurrent request inserted the same email after our check ran.
        return None

    monkeypatch.setattr(users_service, "_refuse_clash", check_passes)
    response = await api.client.post(
        USERS, json={"email": "Raced@example.org"}, headers=tenants.admin.headers
    )
    assert response.status_code == 409, response.text
    assert await api.counts() == before


async def test_admin_deletes_and_restores_a_user(api: Api, tenants: Tenants) -> None:
    path = f"{USERS}/{tenants.member.user.id}"
    before = await api.counts()
    assert (await api.client.delete(path, headers=tenants.admin.headers)).status_code == 204
    assert (await api.client.get(path, headers=tenants.admin.headers)).status_code == 404
    assert (await api.client.delete(path, headers=tenants.admin.headers)).status_code == 404
    # A deleted user can no longer sign in.
    assert (await api.client.get(f"{API}/me", headers=tenants.member.headers)).status_code == 403
    listed = await api.all_pages(USERS, tenants.admin)
    assert [item["id"] for item in listed] == [str(tenants.admin.user.id)]
    with_deleted = await api.all_pages(USERS, tenants.admin, {"include_deleted": "true"})
    assert len(with_deleted) == 2
    shown = await api.client.get(
        path, params={"include_deleted": "true"}, headers=tenants.admin.headers
    )
    assert shown.json()["deleted_at"] is not None

    restored = await api.client.post(f"{path}/restore", headers=tenants.admin.headers)
    assert restored.status_code == 200, restored.text
    assert restored.json()["deleted_at"] is None
    assert (await api.client.get(f"{API}/me", headers=tenants.member.headers)).status_code == 200
    again = await api.client.post(f"{path}/restore", headers=tenants.admin.headers)
    assert again.status_code == 200  # restoring an active user changes nothing

    after = await api.counts()
    assert after.users == before.users
    assert after.audit_logs == before.audit_logs + 2
    rows = await api.audit_rows(tenants.admin.tenant.id, resource_id=tenants.member.user.id)
    assert [(entry.action, entry.metadata_["changed"]) for entry in rows] == [
        ("user.delete", ["deleted_at"]),
        ("user.restore", ["deleted_at"]),
    ]


async def test_restore_conflicts_when_the_email_was_taken_meanwhile(
    api: Api, tenants: Tenants
) -> None:
    first = await _create(api, tenants, email="reused@example.org")
    path = f"{USERS}/{first['id']}"
    assert (await api.client.delete(path, headers=tenants.admin.headers)).status_code == 204
    await _create(api, tenants, email="Reused@example.org")
    before = await api.counts()
    response = await api.client.post(f"{path}/restore", headers=tenants.admin.headers)
    assert response.status_code == 409, response.text
    assert "email" in response.json()["error"]["message"]
    assert await api.counts() == before


async def test_admins_cannot_delete_themselves(api: Api, tenants: Tenants) -> None:
    before = await api.counts()
    response = await api.client.delete(
        f"{USERS}/{tenants.admin.user.id}", headers=tenants.admin.headers
    )
    assert response.status_code == 409, response.text
    assert "yourself" in response.json()["error"]["message"]
    assert await api.counts() == before
    assert (await api.client.get(f"{API}/me", headers=tenants.admin.headers)).status_code == 200


async def test_members_may_not_change_users_or_see_deleted_ones(api: Api, tenants: Tenants) -> None:
    before = await api.counts()
    headers = tenants.member.headers
    admin_path = f"{USERS}/{tenants.admin.user.id}"
    for response in (
        await api.client.post(USERS, json={"email": "x@example.org"}, headers=headers),
        await api.client.delete(admin_path, headers=headers),
        await api.client.delete(f"{USERS}/{tenants.member.user.id}", headers=headers),
        await api.client.post(f"{admin_path}/restore", headers=headers),
        await api.client.get(USERS, params={"include_deleted": "true"}, headers=headers),
        await api.client.get(admin_path, params={"include_deleted": "true"}, headers=headers),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"
    assert await api.counts() == before


async def test_another_tenants_user_is_the_same_404_as_a_random_id(
    api: Api, tenants: Tenants
) -> None:
    theirs = tenants.other.user.id
    before = await api.counts()
    for method, suffix, params in (
        ("GET", "", {}),
        ("GET", "", {"include_deleted": "true"}),
        ("DELETE", "", {}),
        ("POST", "/restore", {}),
    ):
        foreign = await api.client.request(
            method, f"{USERS}/{theirs}{suffix}", params=params, headers=tenants.admin.headers
        )
        unknown = await api.client.request(
            method, f"{USERS}/{uuid.uuid4()}{suffix}", params=params, headers=tenants.admin.headers
        )
        assert foreign.status_code == unknown.status_code == 404, (method, foreign.text)
        assert error_without_request_id(foreign) == error_without_request_id(unknown)
    assert await api.counts() == before
    assert (await api.client.get(f"{API}/me", headers=tenants.other.headers)).status_code == 200


# Addresses that look like "dr.jones@clinic.example" but are other strings (issue 13).
LOOKALIKES = {
    "Cyrillic a": "dr.jones@clinic.ex\u0430mple",
    "Cyrillic o": "dr.j\u043enes@clinic.example",
    "Greek omicron": "dr.j\u03bfnes@clinic.example",
    "digit one for l": "dr.jones@c1inic.example",
}
# NFKC (normalise_email) turns these into the very same address: an exact duplicate.
COMPATIBILITY_FORMS = {
    "fullwidth letters": "dr.\uff4aones@clinic.example",
    "mathematical bold s": "dr.jone\U0001d42c@clinic.example",
}


@pytest.mark.parametrize(
    ("lookalike", "words"),
    [(value, "looks the same") for value in LOOKALIKES.values()]
    + [(value, "already exists") for value in COMPATIBILITY_FORMS.values()],
    ids=[*LOOKALIKES, *COMPATIBILITY_FORMS],
)
async def test_an_address_that_looks_like_an_existing_one_is_a_conflict(
    api: Api, tenants: Tenants, lookalike: str, words: str
) -> None:
    await _create(api, tenants, email="dr.jones@clinic.example")
    before = await api.counts()
    response = await api.client.post(
        USERS, json={"email": lookalike}, headers=tenants.admin.headers
    )
    assert response.status_code == 409, response.text
    assert words in response.json()["error"]["message"]
    assert await api.counts() == before
    # Per tenant, like the email itself: another tenant may hold the lookalike.
    elsewhere = await api.client.post(
        USERS, json={"email": lookalike}, headers=tenants.other.headers
    )
    assert elsewhere.status_code == 201, elsewhere.text


async def test_addresses_that_can_be_told_apart_are_accepted(api: Api, tenants: Tenants) -> None:
    await _create(api, tenants, email="ivan@clinic.example")
    for distinct in ("\u0438\u0432\u0430\u043d@clinic.example", "ivana@clinic.example"):
        await _create(api, tenants, email=distinct)


async def test_restore_conflicts_when_a_lookalike_took_the_address_meanwhile(
    api: Api, tenants: Tenants
) -> None:
    first = await _create(api, tenants, email="nurse.kim@clinic.example")
    path = f"{USERS}/{first['id']}"
    assert (await api.client.delete(path, headers=tenants.admin.headers)).status_code == 204
    await _create(api, tenants, email="nurse.k\u0456m@clinic.example")  # Cyrillic i
    response = await api.client.post(f"{path}/restore", headers=tenants.admin.headers)
    assert response.status_code == 409, response.text
    assert "looks the same" in response.json()["error"]["message"]
