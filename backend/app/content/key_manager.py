"""Per-tenant keys: the interface the envelope encryption calls, and what it raises.

Each tenant has its own key-encryption key (KEK) in a key manager (OpenBao transit here, AWS
KMS in production). The KEK never leaves the key manager: the application asks it for a fresh
data key per object (the plaintext copy to encrypt with, the wrapped copy to store), and for
the plaintext of a stored wrapped key when it reads. Every call binds the tenant id and the
document id as the encryption context, so a wrapped key only unwraps for the document it was
made for. Destroying a tenant's KEK makes every wrapped key of the tenant, and so every copy of
its content, unreadable (crypto-shredding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

DATA_KEY_BYTES = 32  # AES-256


class KeyManagerError(RuntimeError):
    """Base of the errors a key manager raises."""


class KeyManagerUnavailableError(KeyManagerError):
    """The key manager did not answer or failed; callers answer 503."""


class KeyNotFoundError(KeyManagerError):
    """The tenant's key does not exist (never created, or destroyed)."""


class UnwrapError(KeyManagerError):
    """A wrapped key did not unwrap: another tenant's or document's key, tampered, retired,
    or its tenant key destroyed. Never retried, never answered with bytes."""


@dataclass(frozen=True)
class EncryptionContext:
    """What a data key is bound to: the tenant and the document whose content it encrypts."""

    tenant_id: UUID
    document_id: UUID

    def as_dict(self) -> dict[str, str]:
        """The AWS KMS EncryptionContext form."""
        return {"tenant_id": str(self.tenant_id), "document_id": str(self.document_id)}

    def as_bytes(self) -> bytes:
        """A canonical byte string (OpenBao's derivation context, the envelope's AAD)."""
        return f"tenant:{self.tenant_id}/document:{self.document_id}".encode()


@dataclass(frozen=True)
class DataKey:
    """A fresh data key: `plaintext` to encrypt with (memory only), `wrapped` to store."""

    plaintext: bytes = field(repr=False)
    wrapped: bytes


class KeyManager(Protocol):
    """A key manager holding one key-encryption key per tenant, referenced by a string."""

    async def create_tenant_key(self, tenant_id: UUID) -> str:
        """Create the tenant's key (idempotent) and return its reference (for `kms_key_arn`)."""
        ...

    async def generate_data_key(self, key_ref: str, context: EncryptionContext) -> DataKey:
        """A fresh 256-bit data key, wrapped under the tenant's current key version."""
        ...

    async def unwrap(self, key_ref: str, wrapped: bytes, context: EncryptionContext) -> bytes:
        """The plaintext data key of `wrapped` (UnwrapError when it isn't this one's)."""
        ...

    async def rotate(self, key_ref: str) -> None:
        """Make a new key version current; older versions still unwrap until retired."""
        ...

    async def rewrap(self, key_ref: str, wrapped: bytes, context: EncryptionContext) -> bytes:
        """`wrapped` re-encrypted under the current key version, never exposing the data key."""
        ...

    async def retire_old_versions(self, key_ref: str) -> None:
        """Stop older key versions from unwrapping (after every wrapped key was rewrapped)."""
        ...

    async def destroy(self, key_ref: str) -> None:
        """Destroy the tenant's key: nothing it wrapped can be unwrapped any more."""
        ...

    async def current_version(self, key_ref: str) -> int | None:
        """The version new data keys are wrapped under, when the key manager shows it."""
        ...

    def key_version(self, wrapped: bytes) -> int | None:
        """The tenant-key version `wrapped` was made under, when the key manager shows it."""
        ...

    async def check(self) -> None:
        """Raise KeyManagerUnavailableError unless the key manager answers (readiness)."""
        ...


# The context of the probe data key that proves a tenant's key works (no document has it).
_PROBE_DOCUMENT = UUID(int=0)


async def verify_tenant_key(keys: KeyManager, key_ref: str, tenant_id: UUID) -> None:
    """Wrap and unwrap a throw-away data key under `key_ref` for this tenant: the key exists
    and this app may use it both ways (KeyNotFoundError or another KeyManagerError if not)."""
    context = EncryptionContext(tenant_id=tenant_id, document_id=_PROBE_DOCUMENT)
    probe = await keys.generate_data_key(key_ref, context)
    if await keys.unwrap(key_ref, probe.wrapped, context) != probe.plaintext:
        raise UnwrapError(f"the key {key_ref} did not give back the probe data key")
