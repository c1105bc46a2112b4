"""Signed anchors: every tenant's chain head at one moment, signed with a key the database lacks.

Keep anchors outside the database (another system, a WORM bucket, an auditor's mailbox).
Verifying against an earlier anchor detects what the chain alone cannot: a truncated tail or
the whole chain recomputed by someone who can write the database. Whoever holds only the
database cannot forge an anchor: the signature needs the private key.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from app.core import signing
from app.core.config import Settings
from app.schemas.audit_integrity import (
    AnchorHead,
    AuditAnchor,
    AuditChainVerification,
    SignedAuditAnchor,
)


class AnchorError(ValueError):
    """An anchor file is unreadable, forged, or no key is configured to check it."""


def canonical_json(value: Any) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def anchor_from_verification(verification: AuditChainVerification) -> AuditAnchor:
    """The anchor of a verified state: each tenant's head row (tenants without rows omitted)."""
    if not verification.ok:
        raise AnchorError("refusing to anchor a broken audit chain: verify and investigate first")
    heads = [
        AnchorHead(
            tenant_id=status.tenant_id,
            chain_seq=status.head_seq,
            row_hash=status.head_hash,
            created_at=status.head_created_at,
        )
        for status in verification.tenants
        if status.head_seq is not None
        and status.head_hash is not None
        and status.head_created_at is not None
    ]
    return AuditAnchor(anchored_at=datetime.now(UTC), heads=heads)


def sign_anchor(anchor: AuditAnchor, key: Ed25519PrivateKey) -> SignedAuditAnchor:
    """Sign the anchor's canonical JSON with Ed25519."""
    signature = key.sign(canonical_json(anchor.model_dump(mode="json")))
    return SignedAuditAnchor(
        anchor=anchor,
        key_fingerprint=signing.key_fingerprint(key.public_key()),
        signature=base64.b64encode(signature).decode(),
    )


def open_anchor(raw: str | bytes, key: Ed25519PublicKey) -> AuditAnchor:
    """Check a signed anchor file against `key` and return the anchor, or raise AnchorError.

    The signature is checked over the file's own anchor object (canonicalised), before the
    content is trusted; the key comes from settings, never from the file.
    """
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AnchorError("the anchor is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("anchor"), dict):
        raise AnchorError("the anchor has no 'anchor' object: not an audit-anchor file")
    encoded_signature = document.get("signature")
    if not isinstance(encoded_signature, str):
        raise AnchorError("the anchor has no 'signature' string")
    try:
        signature = base64.b64decode(encoded_signature, validate=True)
    except (binascii.Error, ValueError):
        raise AnchorError("the anchor's signature is not base64") from None
    try:
        key.verify(signature, canonical_json(document["anchor"]))
    except InvalidSignature:
        raise AnchorError(
            "the anchor's signature does not verify with the configured key "
            f"(fingerprint {signing.key_fingerprint(key)[:16]}…): forged, altered or "
            "signed with another key"
        ) from None
    try:
        return SignedAuditAnchor.model_validate(document).anchor
    except ValidationError as exc:
        raise AnchorError(f"the anchor is signed but malformed: {exc.errors()[0]['msg']}") from None


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The configured anchor signing key, or AnchorError naming the setting."""
    if settings.AUDIT_ANCHOR_SIGNING_KEY is None:
        raise AnchorError("AUDIT_ANCHOR_SIGNING_KEY is not set: it is needed to sign an anchor")
    return signing.load_private_key(settings.AUDIT_ANCHOR_SIGNING_KEY.get_secret_value())


def verify_key(settings: Settings) -> Ed25519PublicKey:
    """The key anchors are checked with: AUDIT_ANCHOR_VERIFY_KEY, else the signing key's."""
    if settings.AUDIT_ANCHOR_VERIFY_KEY is not None:
        return signing.load_public_key(settings.AUDIT_ANCHOR_VERIFY_KEY)
    if settings.AUDIT_ANCHOR_SIGNING_KEY is not None:
        return signing_key(settings).public_key()
    raise AnchorError(
        "AUDIT_ANCHOR_VERIFY_KEY (or AUDIT_ANCHOR_SIGNING_KEY) is not set: "
        "it is needed to check an anchor's signature"
    )
