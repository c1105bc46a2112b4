"""Ed25519 keys from settings: PEM, or base64 of the 32 raw bytes (handier in an env variable)."""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_RAW_KEY_BYTES = 32


def _raw_bytes(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"expected an Ed25519 {what}: PEM, or base64 of the 32 raw bytes"
        ) from None
    if len(raw) != _RAW_KEY_BYTES:
        raise ValueError(
            f"expected an Ed25519 {what}: base64 of 32 raw bytes, got {len(raw)} bytes"
        )
    return raw


def load_private_key(text: str) -> Ed25519PrivateKey:
    """Parse an Ed25519 private key (unencrypted PKCS#8 PEM, or base64 of the 32 raw bytes)."""
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("expected an unencrypted PEM Ed25519 private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("expected an Ed25519 private key, got another key type")
        return key
    return Ed25519PrivateKey.from_private_bytes(_raw_bytes(text, "private key"))


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse an Ed25519 public key (SubjectPublicKeyInfo PEM, or base64 of the 32 raw bytes)."""
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, UnsupportedAlgorithm):
            raise ValueError("expected a PEM Ed25519 public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("expected an Ed25519 public key, got another key type")
        return key
    return Ed25519PublicKey.from_public_bytes(_raw_bytes(text, "public key"))


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex: a name for the key in files and messages."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()
