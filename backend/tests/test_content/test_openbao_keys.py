"""Per-tenant keys in the real OpenBao transit engine: data keys, rotation, shredding."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from app.content import envelope
from app.content.embedded_openbao import EmbeddedOpenBao
from app.content.embedded_process import free_ports
from app.content.key_manager import (
    EncryptionContext,
    KeyManagerUnavailableError,
    KeyNotFoundError,
    UnwrapError,
)
from app.content.openbao_transit import OpenBaoTransitKeyManager, wrapped_key_version
from tests.test_content.test_envelope import collect, stream


def document_of(tenant_id: uuid.UUID) -> EncryptionContext:
    """A new document's context in `tenant_id`."""
    return EncryptionContext(tenant_id, uuid.uuid4())


async def test_data_keys_are_fresh_and_unwrap_only_for_their_document(
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    tenant = uuid.uuid4()
    key_ref = await key_manager.create_tenant_key(tenant)
    assert await key_manager.create_tenant_key(tenant) == key_ref  # idempotent
    context = document_of(tenant)
    first = await key_manager.generate_data_key(key_ref, context)
    second = await key_manager.generate_data_key(key_ref, context)
    assert len(first.plaintext) == 32
    assert first.plaintext != second.plaintext
    assert first.plaintext not in first.wrapped
    assert first.plaintext.hex() not in repr(first)  # never printed by accident
    assert await key_manager.unwrap(key_ref, first.wrapped, context) == first.plaintext
    with pytest.raises(UnwrapError):
        await key_manager.unwrap(key_ref, first.wrapped, document_of(tenant))
    tampered = first.wrapped[:-4] + (b"AAAA" if not first.wrapped.endswith(b"AAAA") else b"BBBB")
    with pytest.raises(UnwrapError):
        await key_manager.unwrap(key_ref, tampered, context)


async def test_rotation_rewraps_without_touching_content_then_retires_the_old_version(
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    tenant = uuid.uuid4()
    key_ref = await key_manager.create_tenant_key(tenant)
    context = document_of(tenant)
    sealed = await envelope.seal(key_manager, key_ref, context, stream([b"before rotation"]))
    content = await collect(sealed.chunks)
    old_wrapped = sealed.wrapped_key
    assert wrapped_key_version(old_wrapped) == 1

    await key_manager.rotate(key_ref)
    # Until every wrapped key is rewrapped, the old version still opens old documents.
    assert await key_manager.unwrap(key_ref, old_wrapped, context)
    new_wrapped = await key_manager.rewrap(key_ref, old_wrapped, context)
    assert wrapped_key_version(new_wrapped) == 2
    fresh = await key_manager.generate_data_key(key_ref, document_of(tenant))
    assert wrapped_key_version(fresh.wrapped) == 2

    await key_manager.retire_old_versions(key_ref)
    with pytest.raises(UnwrapError):
        await key_manager.unwrap(key_ref, old_wrapped, context)
    # The same ciphertext opens with the rewrapped key: content was never re-encrypted.
    opened = await envelope.unseal(key_manager, key_ref, new_wrapped, context, stream([content]))
    assert await collect(opened) == b"before rotation"


async def test_destroying_a_tenant_key_shreds_its_content(
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    tenant = uuid.uuid4()
    key_ref = await key_manager.create_tenant_key(tenant)
    context = document_of(tenant)
    sealed = await envelope.seal(key_manager, key_ref, context, stream([b"to be shredded"]))
    content = await collect(sealed.chunks)
    other_tenant = uuid.uuid4()
    other_ref = await key_manager.create_tenant_key(other_tenant)
    other_context = document_of(other_tenant)
    other = await key_manager.generate_data_key(other_ref, other_context)

    await key_manager.destroy(key_ref)

    with pytest.raises(UnwrapError):
        await envelope.unseal(key_manager, key_ref, sealed.wrapped_key, context, stream([content]))
    with pytest.raises(KeyNotFoundError):
        await key_manager.generate_data_key(key_ref, document_of(tenant))
    # Re-creating a key of the same name makes new key material: old content stays shredded.
    assert await key_manager.create_tenant_key(tenant) == key_ref
    with pytest.raises(UnwrapError):
        await key_manager.unwrap(key_ref, sealed.wrapped_key, context)
    # Other tenants are untouched.
    assert await key_manager.unwrap(other_ref, other.wrapped, other_context) == other.plaintext


def test_an_unreadable_ca_certificate_makes_the_key_manager_unavailable(
    embedded_openbao: EmbeddedOpenBao, tmp_path: Path
) -> None:
    missing = tmp_path / "openbao.crt"
    with pytest.raises(KeyManagerUnavailableError, match="OPENBAO_CA_CERT"):
        OpenBaoTransitKeyManager(embedded_openbao.address, embedded_openbao.token, ca_cert=missing)


async def test_an_unreachable_or_refusing_key_manager_is_unavailable(
    embedded_openbao: EmbeddedOpenBao,
) -> None:
    (port,) = free_ports(1)
    down = OpenBaoTransitKeyManager(f"http://127.0.0.1:{port}", embedded_openbao.token)
    wrong_token = OpenBaoTransitKeyManager(embedded_openbao.address, "not-a-token")
    try:
        for keys in (down, wrong_token):
            with pytest.raises(KeyManagerUnavailableError):
                await keys.check()
            with pytest.raises(KeyManagerUnavailableError):
                await keys.generate_data_key("tenant-x", document_of(uuid.uuid4()))
    finally:
        await down.close()
        await wrong_token.close()
