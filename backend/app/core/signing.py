"""Signing: Ed25519 keys from settings, and the HMAC seal of the opaque tokens the API hands out.

Ed25519 keys come as PEM, or base64 of the 32 raw bytes (handier in an env variable). Opaque
tokens (pagination cursors, consistency tokens) are a payload and its truncated HMAC-SHA256,
base64url without padding: `seal` makes one, `unseal` checks one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_RAW_KEY_BYTES = 32
_TAG_BYTES = 16


def purpose_key(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose derived from `secret`, so one token kind never passes as another."""
    return hmac.new(secret, f"tenant-docs/{purpose}".encode(), hashlib.sha256).digest()


def _tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:_TAG_BYTES]


def seal(key: bytes, payload: bytes) -> str:
    """`payload` and its HMAC-SHA256 tag (16 bytes), as unpadded base64url."""
    return base64.urlsafe_b64encode(payload + _tag(key, payload)).decode().rstrip("=")


def unseal(key: bytes, token: str) -> bytes | None:
    """The payload of a token `seal(key, ...)` made; None if it is not one (or was altered)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    payload, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    if len(raw) <= _TAG_BYTES or not hmac.compare_digest(tag, _tag(key, payload)):
        return None
    return payload


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
