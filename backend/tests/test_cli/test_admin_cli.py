"""The admin CLI in a real subprocess: provisioning, audit rows, output, and one-line errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import Result

from app.auth.dev_issuer import DEV_ISSUER, dev_issuer_for
from app.core.config import Settings
from app.database import Database
from app.database.session import admin_transaction
from app.main import create_app
from app.models import AuditLog, User
from testkit.factories import make_tenant_with_vectors
from tests.conftest import MakeCaller
from tests.test_cli.conftest import InvokeCli, RunCli


def _ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _one_line_error(
    result: subprocess.CompletedProcess[str] | Result, code: int, fragment: str
) -> None:
    returncode = (
        result.returncode if isinstance(result, subprocess.CompletedProcess) else result.exit_code
    )
    assert returncode == code, (returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


async def _audit_actions(
    admin_sessions: async_sessionmaker[AsyncSession], resource_id: uuid.UUID
) -> list[tuple[str, Any, str]]:
    async with admin_transaction(admin_sessions) as session:
        rows = await session.execute(
            select(AuditLog.action, AuditLog.user_id, AuditLog.tenant_id, AuditLog.metadata_)
            .where(AuditLog.resource_id == resource_id)
            .order_by(AuditLog.created_at, AuditLog.id)
        )
        return [
            (r.action, r.user_id, str(r.tenant_id))
            for r in rows
            if r.metadata_["source"] == "admin-cli"
        ]


async def test_tenant_and_user_lifecycles(
    run_cli_in_process: RunCli, admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    # In-process: 22 commands, whose exit codes and one-line errors from a real process
    # test_bad_input_exit_codes_from_the_real_process holds.
    await _tenant_lifecycle_with_an_audit_row_per_change(run_cli_in_process, admin_sessions)
    await _user_lifecycle_and_conflicts(run_cli_in_process, admin_sessions)


async def _tenant_lifecycle_with_an_audit_row_per_change(
    run_cli: RunCli, admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    created = _ok(await run_cli("create-tenant", "  Acme Health  ", "--json"))
    tenant_id = created["id"]
    assert created["name"] == "Acme Health"
    assert created["status"] == "active"
    assert created["deleted_at"] is None
    assert created["kms_key_arn"] == f"tenant-{tenant_id}"  # its own key, made in OpenBao

    assert _ok(await run_cli("suspend-tenant", tenant_id, "--json"))["status"] == "suspended"
    assert _ok(await run_cli("suspend-tenant", tenant_id, "--json"))["status"] == "suspended"
    assert _ok(await run_cli("activate-tenant", tenant_id, "--json"))["status"] == "active"
    assert _ok(await run_cli("delete-tenant", tenant_id, "--json"))["deleted_at"] is not None

    listed = _ok(await run_cli("list-tenants", "--json"))
    assert tenant_id not in {t["id"] for t in listed}
    listed_all = _ok(await run_cli("list-tenants", "--include-deleted", "--json"))
    assert tenant_id in {t["id"] for t in listed_all}
    _one_line_error(await run_cli("suspend-tenant", tenant_id), 1, "is deleted; restore it first")

    assert _ok(await run_cli("restore-tenant", tenant_id, "--json"))["deleted_at"] is None
    table = await run_cli("list-tenants")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "KMS_KEY_ARN", "CREATED_AT", "DELETED_AT"]
    assert any(row.startswith(tenant_id) and "Acme Health" in row for row in rows)

    actions = await _audit_actions(admin_sessions, uuid.UUID(tenant_id))
    # The repeated suspend changed nothing, so it wrote nothing.
    assert actions == [
        (action, None, tenant_id)
        for action in (
            "tenant.create",
            "tenant.suspend",
            "tenant.activate",
            "tenant.delete",
            "tenant.restore",
        )
    ]


async def _user_lifecycle_and_conflicts(
    run_cli: RunCli, admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id = _ok(await run_cli("create-tenant", "Beta Labs", "--json"))["id"]
    user = _ok(
        await run_cli(
            "create-user",
            "--tenant",
            tenant_id,
            "--email",
            "Ann@Beta.example",
            "--external-idp-id",
            "idp|ann",
            "--role",
            "admin",
            "--full-name",
            "Ann",
            "--json",
        )
    )
    assert user["email"] == "ann@beta.example"
    assert user["role"] == "admin"
    assert user["tenant_id"] == tenant_id

    duplicate_email = await run_cli(
        "create-user",
        "--tenant",
        tenant_id,
        "--email",
        "ANN@beta.example",
        "--external-idp-id",
        "idp|other",
    )
    _one_line_error(duplicate_email, 1, "a user with email ann@beta.example already exists")
    duplicate_subject = await run_cli(
        "create-user",
        "--tenant",
        tenant_id,
        "--email",
        "bob@beta.example",
        "--external-idp-id",
        "idp|ann",
    )
    _one_line_error(duplicate_subject, 1, "external IdP id idp|ann already exists")

    # The same email in another tenant is fine.
    other_tenant = _ok(await run_cli("create-tenant", "Gamma", "--json"))["id"]
    _ok(
        await run_cli(
            "create-user",
            "--tenant",
            other_tenant,
            "--email",
            "ann@beta.example",
            "--external-idp-id",
            "idp|ann",
            "--json",
        )
    )

    assert _ok(await run_cli("delete-user", user["id"], "--json"))["deleted_at"] is not None
    listed = _ok(await run_cli("list-users", "--tenant", tenant_id, "--json"))
    assert listed == []
    # Email freed by the delete: a new user takes it, so the old one can't come back.
    replacement = _ok(
        await run_cli(
            "create-user",
            "--tenant",
            tenant_id,
            "--email",
            "ann@beta.example",
            "--external-idp-id",
            "idp|ann-2",
            "--json",
        )
    )
    _one_line_error(await run_cli("restore-user", user["id"]), 1, "already exists in this tenant")
    _ok(await run_cli("delete-user", replacement["id"], "--json"))
    assert _ok(await run_cli("restore-user", user["id"], "--json"))["deleted_at"] is None

    async with admin_transaction(admin_sessions) as session:
        count = await session.scalar(
            select(func.count()).select_from(User).where(User.tenant_id == uuid.UUID(tenant_id))
        )
    assert count == 2  # the refused creates wrote nothing
    actions = await _audit_actions(admin_sessions, uuid.UUID(user["id"]))
    assert [a[0] for a in actions] == ["user.create", "user.delete", "user.restore"]
    assert all(user_id is None and tid == tenant_id for _, user_id, tid in actions)


UNKNOWN = "7c5a4a8e-2f7e-4f7b-9a51-3f0f3c1d2e4a"
BAD_INPUT: dict[str, tuple[list[str], int, str]] = {
    "bad tenant uuid": (
        ["suspend-tenant", "not-a-uuid"],
        2,
        "TENANT_ID must be a UUID, got 'not-a-uuid'",
    ),
    "bad user uuid": (["delete-user", "12345"], 2, "USER_ID must be a UUID"),
    "bad --tenant": (
        ["create-user", "--tenant", "nope", "--email", "a@b.example", "--external-idp-id", "x"],
        2,
        "--tenant must be a UUID",
    ),
    "invalid email": (
        ["create-user", "--tenant", UNKNOWN, "--email", "not-an-email", "--external-idp-id", "x"],
        2,
        "invalid input: email:",
    ),
    "bad role": (
        [
            "create-user",
            "--tenant",
            UNKNOWN,
            "--email",
            "a@b.example",
            "--external-idp-id",
            "x",
            "--role",
            "owner",
        ],
        2,
        "invalid input: role:",
    ),
    "blank tenant name": (["create-tenant", "   "], 2, "the tenant name must not be blank"),
    "unknown tenant": (["suspend-tenant", UNKNOWN], 1, f"no tenant with id {UNKNOWN}"),
    "user in unknown tenant": (
        ["create-user", "--tenant", UNKNOWN, "--email", "a@b.example", "--external-idp-id", "x"],
        1,
        f"no tenant with id {UNKNOWN}",
    ),
    "unknown user": (["restore-user", UNKNOWN], 1, f"no user with id {UNKNOWN}"),
    "system tenant": (
        ["delete-tenant", "00000000-0000-0000-0000-000000000000"],
        1,
        "no tenant with id",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(case: str, invoke_cli: InvokeCli) -> None:
    args, code, fragment = BAD_INPUT[case]
    result = invoke_cli(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    _one_line_error(result, code, fragment)


async def test_bad_input_exit_codes_from_the_real_process(run_cli: RunCli) -> None:
    # The same two classes of failure as above, from a real `python -m app` process.
    bad_uuid, unknown = await asyncio.gather(
        run_cli(*BAD_INPUT["bad tenant uuid"][0]), run_cli(*BAD_INPUT["unknown tenant"][0])
    )
    _one_line_error(bad_uuid, 2, BAD_INPUT["bad tenant uuid"][2])
    _one_line_error(unknown, 1, BAD_INPUT["unknown tenant"][2])


async def test_dev_token_is_accepted_by_a_dev_mode_app(
    run_cli: RunCli, make_caller: MakeCaller, settings: Settings, database: Database
) -> None:
    caller = await make_caller(role="admin", email="dev@example.org")
    dev_env = {"ENVIRONMENT": "development"}
    by_email, by_id = await asyncio.gather(
        run_cli(
            "dev-token", "--tenant", str(caller.tenant.id), "--user", "DEV@example.org", **dev_env
        ),
        run_cli(
            "dev-token",
            "--tenant",
            str(caller.tenant.id),
            "--user",
            str(caller.user.id),
            "--expires-in",
            "120",
            "--json",
            **dev_env,
        ),
    )
    assert by_email.returncode == 0, by_email.stderr
    token = by_email.stdout.strip()
    as_json = _ok(by_id)
    assert as_json["token_type"] == "Bearer"
    assert as_json["expires_in"] == 120

    dev_settings = settings.model_copy(
        update={"OIDC_ISSUER_URL": None, "OIDC_CLIENT_ID": None, "ENVIRONMENT": "development"}
    )
    assert dev_issuer_for(dev_settings).kid  # the same key file the CLI used
    app = create_app(dev_settings, database)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        for bearer_token in (token, as_json["access_token"]):
            response = await http.get(
                "/api/v1/me", headers={"Authorization": f"Bearer {bearer_token}"}
            )
            assert response.status_code == 200, response.text
            assert response.json()["user"]["id"] == str(caller.user.id)
        # The app in dev mode trusts only its own issuer: the test IdP's token is refused.
        refused = await http.get("/api/v1/me", headers=caller.headers)
        assert refused.status_code == 401
    assert DEV_ISSUER.startswith("urn:")


async def test_dev_token_refusals(run_cli_in_process: RunCli, make_caller: MakeCaller) -> None:
    run_cli = run_cli_in_process  # the refusals are the command's; the process adds nothing
    caller = await make_caller()
    tenant = str(caller.tenant.id)
    with_idp, production, unknown_user = await asyncio.gather(
        run_cli(
            "dev-token",
            "--tenant",
            tenant,
            "--user",
            str(caller.user.id),
            OIDC_ISSUER_URL="https://idp.example.test",
            OIDC_CLIENT_ID="app",
        ),
        run_cli(
            "dev-token",
            "--tenant",
            tenant,
            "--user",
            str(caller.user.id),
            ENVIRONMENT="production",
            OIDC_ISSUER_URL="https://idp.example.test",
            OIDC_CLIENT_ID="app",
            # A complete production configuration, so what refuses is dev-token itself.
            S3_BUCKET="tenant-docs-content",
            AWS_REGION="eu-west-1",
            KMS_PROVIDER="aws-kms",
        ),
        run_cli("dev-token", "--tenant", tenant, "--user", "nobody@example.org"),
    )
    _one_line_error(with_idp, 2, "OIDC_ISSUER_URL is set")
    _one_line_error(production, 2, "refused when ENVIRONMENT=production")
    _one_line_error(unknown_user, 1, "no active user nobody@example.org")


async def test_vector_indexes_builds_an_index_for_a_tenant_over_the_threshold_and_drops_it(
    run_cli_in_process: RunCli, admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    run_cli = run_cli_in_process  # four commands; the process boundary is held above
    vectors = np.random.default_rng(5).standard_normal((120, 1024))
    tenant_id = await make_tenant_with_vectors(admin_sessions, vectors)
    planned = await run_cli("vector-indexes", "--min-rows", "100", "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert f"build            tenant {tenant_id}        120 rows" in planned.stdout
    assert "dry run: nothing changed" in planned.stdout

    built = await run_cli("vector-indexes", "--min-rows", "100")
    assert built.returncode == 0, built.stderr
    assert f"build            tenant {tenant_id}" in built.stdout
    # Under half the threshold now: dropped (this also leaves the shared test database clean).
    dropped = await run_cli("vector-indexes", "--min-rows", "1000")
    assert dropped.returncode == 0, dropped.stderr
    assert f"drop             tenant {tenant_id}" in dropped.stdout

    refused = await run_cli("vector-indexes", DATABASE_URL="postgresql://nobody@127.0.0.1:1/x")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: the database refused or is unavailable")
