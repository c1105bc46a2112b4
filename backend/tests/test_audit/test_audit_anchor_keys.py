"""The anchor key settings accept PEM or base64 raw Ed25519 keys and refuse anything else."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.core.config import SettingsError, load_settings
from app.core.signing import raw_public_key
from app.services import audit_anchor as audit_anchor_service
from tests.test_audit.conftest import new_signing_key


def test_signing_key_as_base64_raw_or_pem_gives_the_same_verify_key() -> None:
    key, raw_b64 = new_signing_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()

    for value in (raw_b64, pem):
        settings = load_settings(ENVIRONMENT="test", AUDIT_ANCHOR_SIGNING_KEY=value)
        derived = audit_anchor_service.verify_key(settings)
        assert raw_public_key(derived) == raw_public_key(key.public_key())


def test_configured_verify_key_wins_over_the_signing_key() -> None:
    _, signing_b64 = new_signing_key()
    auditor_key = Ed25519PrivateKey.generate().public_key()
    public_pem = auditor_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()

    settings = load_settings(
        ENVIRONMENT="test",
        AUDIT_ANCHOR_SIGNING_KEY=signing_b64,
        AUDIT_ANCHOR_VERIFY_KEY=public_pem,
    )

    assert raw_public_key(audit_anchor_service.verify_key(settings)) == raw_public_key(auditor_key)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "AUDIT_ANCHOR_SIGNING_KEY",
            "not base64!",
            "AUDIT_ANCHOR_SIGNING_KEY: expected an Ed25519",
        ),
        (
            "AUDIT_ANCHOR_SIGNING_KEY",
            base64.b64encode(b"short").decode(),
            "AUDIT_ANCHOR_SIGNING_KEY: expected an Ed25519 private key: base64 of 32 raw bytes",
        ),
        (
            "AUDIT_ANCHOR_VERIFY_KEY",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "AUDIT_ANCHOR_VERIFY_KEY: expected a PEM Ed25519 public key",
        ),
    ],
)
def test_malformed_keys_are_refused_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(ENVIRONMENT="test", **{variable: value})


def test_no_key_configured_is_a_clear_error() -> None:
    settings = load_settings(ENVIRONMENT="test")

    with pytest.raises(audit_anchor_service.AnchorError, match="AUDIT_ANCHOR_SIGNING_KEY"):
        audit_anchor_service.signing_key(settings)
    with pytest.raises(audit_anchor_service.AnchorError, match="AUDIT_ANCHOR_VERIFY_KEY"):
        audit_anchor_service.verify_key(settings)
