"""Each tenant gets its own key when created (or brings one, checked), as the provisioning role;
a key manager that is down creates no tenant. The CLI runs in-process here."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.content.embedded_process import free_ports
from app.content.key_manager import EncryptionContext
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.database.session import admin_transaction
from app.models import AuditLog, Tenant
from testkit.factories import make_tenant
from tests.test_cli.conftest import RunCli
from tests.test_cli.test_admin_cli import _ok, _one_line_error


@pytest.fixture
def run_cli(run_cli_in_process: RunCli) -> RunCli:
    """In-process: what is tested here is key provisioning, not the process boundary (which
    test_admin_cli.py's real-process tests hold), and a subprocess costs ~2 s per command."""
    return run_cli_in_process


async def _tenant_count(admin_sessions: async_sessionmaker[AsyncSession], name: str) -> int:
    async with admin_transaction(admin_sessions) as session:
        count = await session.scalar(
            select(func.count()).select_from(Tenant).where(Tenant.name == name)
        )
    return int(count or 0)


async def test_a_new_tenants_key_wraps_and_unwraps_for_it(
    run_cli: RunCli, key_manager: OpenBaoTransitKeyManager
) -> None:
    created = _ok(await run_cli("create-tenant", "Keyed Clinic", "--json"))
    tenant_id = uuid.UUID(created["id"])
    context = EncryptionContext(tenant_id=tenant_id, document_id=uuid.uuid4())
    data_key = await key_manager.generate_data_key(created["kms_key_arn"], context)
    assert await key_manager.unwrap(created["kms_key_arn"], data_key.wrapped, context) == (
        data_key.plaintext
    )


async def test_an_operator_may_bring_a_key_and_it_is_checked(
    run_cli: RunCli,
    key_manager: OpenBaoTransitKeyManager,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    existing = await key_manager.create_tenant_key(uuid.uuid4())  # made by the operator
    brought = _ok(
        await run_cli("create-tenant", "Brings A Key", "--kms-key-ref", existing, "--json")
    )
    assert brought["kms_key_arn"] == existing

    name = f"bad-key-{uuid.uuid4().hex[:6]}"
    _one_line_error(
        await run_cli("create-tenant", name, "--kms-key-ref", "no-such-key"), 1, "not usable"
    )
    assert await _tenant_count(admin_sessions, name) == 0


async def test_key_manager_down_creates_no_tenant(
    run_cli: RunCli, admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    (port,) = free_ports(1)
    name = f"no-kms-{uuid.uuid4().hex[:6]}"
    result = await run_cli(
        "create-tenant", name, OPENBAO_ADDR=f"http://127.0.0.1:{port}", OPENBAO_TOKEN="t"
    )
    _one_line_error(result, 3, "OpenBao unreachable")
    assert await _tenant_count(admin_sessions, name) == 0


async def test_a_tenant_made_before_keys_gets_one_once(
    run_cli: RunCli,
    key_manager: OpenBaoTransitKeyManager,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with admin_transaction(admin_sessions) as session:
        tenant_id = str((await make_tenant(session)).id)
    provisioned = _ok(await run_cli("provision-tenant-key", "--tenant", tenant_id, "--json"))
    assert provisioned["kms_key_arn"] == f"tenant-{tenant_id}"
    # Asking again keeps the key; asking for another one is refused.
    assert _ok(await run_cli("provision-tenant-key", "--tenant", tenant_id, "--json")) == (
        provisioned
    )
    other = await key_manager.create_tenant_key(uuid.uuid4())
    _one_line_error(
        await run_cli("provision-tenant-key", "--tenant", tenant_id, "--kms-key-ref", other),
        1,
        "rotate-tenant-key",
    )
    async with admin_transaction(admin_sessions) as session:
        actions = (
            await session.scalars(
                select(AuditLog.action).where(AuditLog.resource_id == uuid.UUID(tenant_id))
            )
        ).all()
    assert list(actions) == ["tenant.provision_key"]


async def test_rotate_tenant_key_from_the_cli(run_cli: RunCli) -> None:
    tenant_id = _ok(await run_cli("create-tenant", "Rotating", "--json"))["id"]
    report = _ok(await run_cli("rotate-tenant-key", "--tenant", tenant_id, "--json"))
    assert report == {
        "tenant_id": tenant_id,
        "kms_key_arn": f"tenant-{tenant_id}",
        "key_version": 2,
        "rewrapped": 0,
    }


async def test_a_tenant_created_without_a_key_has_none_until_it_is_provisioned(
    run_cli: RunCli, key_manager: OpenBaoTransitKeyManager
) -> None:
    """--without-key (no KMS configured yet) records no key; provision-tenant-key adds one."""
    created = _ok(await run_cli("create-tenant", "Keyless Clinic", "--without-key", "--json"))
    assert created["kms_key_arn"] is None
    keyed = _ok(await run_cli("provision-tenant-key", "--tenant", created["id"], "--json"))
    context = EncryptionContext(uuid.UUID(created["id"]), uuid.uuid4())
    data_key = await key_manager.generate_data_key(keyed["kms_key_arn"], context)
    assert await key_manager.unwrap(keyed["kms_key_arn"], data_key.wrapped, context) == (
        data_key.plaintext
    )
