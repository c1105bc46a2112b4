"""KeyManager over AWS KMS (production): one customer-managed key per tenant.

Thin on purpose: AWS KMS cannot be reached from the test environment, and a local imitation
(moto) keeps decrypting after a key is scheduled for deletion, so it would prove nothing about
shredding. Each method is one KMS call whose semantics the OpenBao implementation mirrors and
its tests exercise. The tenant's key is the ARN stored in `tenants.kms_key_arn`; an alias
`alias/tenant-docs/<tenant id>` makes creation idempotent.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING
from uuid import UUID

from botocore.exceptions import BotoCoreError, ClientError

from app.content.key_manager import (
    DataKey,
    EncryptionContext,
    KeyManagerError,
    KeyManagerUnavailableError,
    KeyNotFoundError,
    UnwrapError,
)

if TYPE_CHECKING:
    from types_aiobotocore_kms import KMSClient

ALIAS_PREFIX = "alias/tenant-docs/"
# Errors that mean "this wrapped key is not yours to open": wrong key or context, tampered,
# key disabled or pending deletion (shredded).
_UNWRAP_ERRORS = {
    "InvalidCiphertextException",
    "IncorrectKeyException",
    "KMSInvalidStateException",
    "DisabledException",
    "NotFoundException",
}
_UNAVAILABLE_ERRORS = {
    "DependencyTimeoutException",
    "KMSInternalException",
    "ThrottlingException",
    "AccessDeniedException",
}


class AwsKmsKeyManager:
    """Per-tenant customer-managed KMS keys."""

    def __init__(self, client: KMSClient, stack: AsyncExitStack, deletion_window_days: int) -> None:
        self._client = client
        self._stack = stack
        self._deletion_window_days = deletion_window_days

    @classmethod
    async def open(
        cls,
        *,
        region: str,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        deletion_window_days: int = 30,
    ) -> AwsKmsKeyManager:
        """Create the client (credentials: the given keys, else the AWS default chain)."""
        # Imported here: aiobotocore (with aiohttp) is ~0.7 s of CPU to import, which every CLI
        # command and test subprocess would pay without using AWS KMS.
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "kms",
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=AioConfig(connect_timeout=3, read_timeout=10, retries={"mode": "standard"}),
            )
        )
        return cls(client, stack, deletion_window_days)

    async def close(self) -> None:
        """Close the client's connections."""
        await self._stack.aclose()

    def _translate(self, exc: Exception, *, unwrapping: bool = False) -> KeyManagerError:
        if not isinstance(exc, ClientError):
            return KeyManagerUnavailableError(f"AWS KMS unreachable: {type(exc).__name__}")
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in _UNAVAILABLE_ERRORS:
            return KeyManagerUnavailableError(f"AWS KMS: {code}")
        if unwrapping and code in _UNWRAP_ERRORS:
            return UnwrapError(f"the data key did not unwrap: {code}")
        if code in {"NotFoundException", "KMSInvalidStateException", "DisabledException"}:
            return KeyNotFoundError(code)
        return KeyManagerError(f"AWS KMS refused the request: {code}")

    async def create_tenant_key(self, tenant_id: UUID) -> str:
        """CreateKey + CreateAlias, or the existing key's ARN if the alias exists."""
        alias = f"{ALIAS_PREFIX}{tenant_id}"
        try:
            existing = await self._client.describe_key(KeyId=alias)
            return existing["KeyMetadata"]["Arn"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NotFoundException":
                raise self._translate(exc) from exc
        except BotoCoreError as exc:
            raise self._translate(exc) from exc
        try:
            created = await self._client.create_key(
                Description=f"tenant-docs: key-encryption key of tenant {tenant_id}",
                KeyUsage="ENCRYPT_DECRYPT",
                KeySpec="SYMMETRIC_DEFAULT",
                Tags=[{"TagKey": "tenant_id", "TagValue": str(tenant_id)}],
            )
            arn = created["KeyMetadata"]["Arn"]
            await self._client.create_alias(AliasName=alias, TargetKeyId=arn)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc) from exc
        return arn

    async def generate_data_key(self, key_ref: str, context: EncryptionContext) -> DataKey:
        """GenerateDataKey (AES_256) with the encryption context."""
        try:
            answer = await self._client.generate_data_key(
                KeyId=key_ref, KeySpec="AES_256", EncryptionContext=context.as_dict()
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc) from exc
        return DataKey(plaintext=answer["Plaintext"], wrapped=answer["CiphertextBlob"])

    async def unwrap(self, key_ref: str, wrapped: bytes, context: EncryptionContext) -> bytes:
        """Decrypt, pinned to the tenant's key (KeyId) and the document's context."""
        try:
            answer = await self._client.decrypt(
                KeyId=key_ref, CiphertextBlob=wrapped, EncryptionContext=context.as_dict()
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, unwrapping=True) from exc
        return answer["Plaintext"]

    async def rotate(self, key_ref: str) -> None:
        """RotateKeyOnDemand: new backing key material; KMS keeps the old for decryption."""
        try:
            await self._client.rotate_key_on_demand(KeyId=key_ref)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc) from exc

    async def rewrap(self, key_ref: str, wrapped: bytes, context: EncryptionContext) -> bytes:
        """ReEncrypt within KMS to the current backing key; the data key never leaves it."""
        try:
            answer = await self._client.re_encrypt(
                CiphertextBlob=wrapped,
                SourceKeyId=key_ref,
                SourceEncryptionContext=context.as_dict(),
                DestinationKeyId=key_ref,
                DestinationEncryptionContext=context.as_dict(),
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, unwrapping=True) from exc
        return answer["CiphertextBlob"]

    async def retire_old_versions(self, key_ref: str) -> None:
        """Nothing to do: KMS keeps every backing key of a key and offers no way to drop one.
        Old material is destroyed only with the whole key (docs/ENCRYPTION.md, rotation)."""

    async def destroy(self, key_ref: str) -> None:
        """ScheduleKeyDeletion: decryption fails at once; the key is gone after the window."""
        try:
            await self._client.schedule_key_deletion(
                KeyId=key_ref, PendingWindowInDays=self._deletion_window_days
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc) from exc

    async def current_version(self, key_ref: str) -> int | None:
        """None: KMS does not number a key's backing keys."""
        return None

    def key_version(self, wrapped: bytes) -> int | None:
        """None: a KMS ciphertext blob does not say which backing key made it."""
        return None

    async def check(self) -> None:
        """ListKeys (one): KMS answers and accepts our credentials."""
        try:
            await self._client.list_keys(Limit=1)
        except (ClientError, BotoCoreError) as exc:
            raise KeyManagerUnavailableError(f"AWS KMS: {type(exc).__name__}") from exc
