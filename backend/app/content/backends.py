"""The object store and the key manager the app uses, opened on first use.

From Settings: a configured S3 bucket and KMS are used as they are; without them (development
and tests only; production refuses it) the embedded SeaweedFS and OpenBao are started the first
time content is stored or read, so a process that never touches content never starts them.
Readiness checks a dependency only when it is configured or has been opened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.content.aws_kms import AwsKmsKeyManager
from app.content.embedded_process import EmbeddedServerError
from app.content.key_manager import KeyManager, KeyManagerError, KeyManagerUnavailableError
from app.content.object_store import (
    ObjectStore,
    ObjectStoreError,
    S3Location,
    S3ObjectStore,
    StorageUnavailableError,
)
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import KmsProvider, Settings

logger = logging.getLogger(__name__)

STORAGE_CHECK = "object_storage"
KMS_CHECK = "kms"
CHECK_TIMEOUT_SECONDS = 1.5  # within the readiness route's 2 s


def _secret(value: object) -> str | None:
    return None if value is None else value.get_secret_value()  # type: ignore[attr-defined]


def _refuse_embedded_in_production(settings: Settings, setting: str, what: str) -> None:
    # Not (yet) a start-up requirement: that comes with the deploy files (compose, Railway)
    # providing S3 and a KMS; until then a production process refuses at first use instead.
    if settings.is_production:
        raise EmbeddedServerError(
            f"{setting}: required when ENVIRONMENT=production (the embedded {what} is for"
            " development only)"
        )


async def open_object_store(settings: Settings) -> S3ObjectStore:
    """The configured S3 bucket, or the embedded SeaweedFS (started or attached to)."""
    if not settings.embedded_object_store:
        assert settings.S3_BUCKET is not None
        return await S3ObjectStore.open(
            S3Location(
                bucket=settings.S3_BUCKET,
                region=settings.s3_region,
                endpoint_url=settings.S3_ENDPOINT_URL,
                access_key_id=_secret(settings.S3_ACCESS_KEY_ID),
                secret_access_key=_secret(settings.S3_SECRET_ACCESS_KEY),
                ca_bundle=None if settings.S3_CA_BUNDLE is None else str(settings.S3_CA_BUNDLE),
            )
        )
    from app.content.embedded_seaweedfs import start_seaweedfs

    try:
        _refuse_embedded_in_production(settings, "S3_BUCKET", "object store")
        embedded = await asyncio.to_thread(start_seaweedfs, settings.EMBEDDED_S3_DIR)
    except EmbeddedServerError as exc:
        raise StorageUnavailableError(f"embedded SeaweedFS: {exc}") from exc
    store = await S3ObjectStore.open(
        S3Location(
            bucket=embedded.bucket,
            region=embedded.region,
            endpoint_url=embedded.endpoint_url,
            access_key_id=embedded.access_key_id,
            secret_access_key=embedded.secret_access_key,
        )
    )
    try:
        await store.ensure_bucket()
    except BaseException:
        await store.close()  # its connections, not left to the garbage collector
        raise
    return store


async def open_key_manager(settings: Settings) -> OpenBaoTransitKeyManager | AwsKmsKeyManager:
    """AWS KMS, the configured OpenBao, or the embedded OpenBao (started or attached to)."""
    if settings.KMS_PROVIDER is KmsProvider.AWS_KMS:
        assert settings.AWS_REGION is not None, "Settings require it with KMS_PROVIDER=aws-kms"
        return await AwsKmsKeyManager.open(
            region=settings.AWS_REGION,
            access_key_id=_secret(settings.AWS_ACCESS_KEY_ID),
            secret_access_key=_secret(settings.AWS_SECRET_ACCESS_KEY),
            deletion_window_days=settings.KMS_KEY_DELETION_WINDOW_DAYS,
        )
    if settings.OPENBAO_ADDR is not None:
        return OpenBaoTransitKeyManager(
            settings.OPENBAO_ADDR,
            _secret(settings.OPENBAO_TOKEN) or "",
            ca_cert=settings.OPENBAO_CA_CERT,
        )
    from app.content.embedded_openbao import start_openbao

    try:
        _refuse_embedded_in_production(settings, "KMS_PROVIDER=aws-kms or OPENBAO_ADDR", "OpenBao")
        embedded = await asyncio.to_thread(start_openbao, settings.EMBEDDED_OPENBAO_DIR)
    except EmbeddedServerError as exc:
        raise KeyManagerUnavailableError(f"embedded OpenBao: {exc}") from exc
    return OpenBaoTransitKeyManager(embedded.address, embedded.token)


class _Checkable(Protocol):
    async def check(self) -> None: ...


async def _probe(name: str, dependency: Callable[[], Awaitable[_Checkable]]) -> str:
    """Open `dependency` and run its check within the timeout: "ok" or why not."""
    try:
        opened = await dependency()
        await asyncio.wait_for(opened.check(), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return "timed out"
    except (ObjectStoreError, KeyManagerError) as exc:
        logger.warning(
            "readiness: dependency unavailable", extra={"check": name, "error": str(exc)}
        )
        return "unavailable"
    return "ok"


@dataclass
class ContentBackends:
    """Lazily opened object store and key manager, shared by every request of a process."""

    settings: Settings
    store: S3ObjectStore | None = None
    keys: OpenBaoTransitKeyManager | AwsKmsKeyManager | None = None
    owned: bool = True  # close what we opened; tests pass session-wide ones they close
    _store_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _keys_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def object_store(self) -> ObjectStore:
        """The object store, opened (and the embedded server started) on the first call."""
        async with self._store_lock:
            if self.store is None:
                self.store = await open_object_store(self.settings)
            return self.store

    async def key_manager(self) -> KeyManager:
        """The key manager, opened (and the embedded server started) on the first call."""
        async with self._keys_lock:
            if self.keys is None:
                self.keys = await open_key_manager(self.settings)
            return self.keys

    async def readiness(self) -> dict[str, str]:
        """Each dependency that is configured or already in use: "ok" or why not."""
        checks: dict[str, str] = {}
        if self.store is not None or not self.settings.embedded_object_store:
            checks[STORAGE_CHECK] = await _probe(STORAGE_CHECK, self.object_store)
        if self.keys is not None or not self.settings.embedded_key_manager:
            checks[KMS_CHECK] = await _probe(KMS_CHECK, self.key_manager)
        return checks

    async def close(self) -> None:
        """Close the clients this object opened."""
        if not self.owned:
            return
        if self.store is not None:
            await self.store.close()
        if self.keys is not None:
            await self.keys.close()
