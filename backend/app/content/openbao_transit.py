"""KeyManager over OpenBao's transit engine (the local default; also an operated OpenBao).

Each tenant's key is a transit key named `tenant-<tenant id>`, of type aes256-gcm96 with
`derived` on: every operation passes the encryption context, from which OpenBao derives the
actual key (HKDF), so a wrapped key made for one document does not unwrap for another.
Spoken to over its HTTP API (https://openbao.org/api-docs/secret/transit/) with httpx.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from app.content.key_manager import (
    DATA_KEY_BYTES,
    DataKey,
    EncryptionContext,
    KeyManagerError,
    KeyManagerUnavailableError,
    KeyNotFoundError,
    UnwrapError,
)

TENANT_KEY_PREFIX = "tenant-"


def tenant_key_name(tenant_id: UUID) -> str:
    """The transit key name of a tenant."""
    return f"{TENANT_KEY_PREFIX}{tenant_id}"


def wrapped_key_version(wrapped: bytes) -> int:
    """The key version a wrapped key was made under (`vault:v3:...` -> 3)."""
    prefix, version, _ = wrapped.decode(errors="replace").split(":", 2)
    if prefix != "vault" or not version.startswith("v") or not version[1:].isdigit():
        raise UnwrapError("not an OpenBao transit ciphertext")
    return int(version[1:])


def _error_text(response: httpx.Response) -> str:
    """OpenBao's `errors` list as one line (a proxy in between may answer something else)."""
    try:
        return "; ".join(str(error) for error in response.json().get("errors", []))
    except (ValueError, AttributeError):
        return response.text[:200]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class OpenBaoTransitKeyManager:
    """Per-tenant keys in one OpenBao transit mount."""

    def __init__(
        self,
        address: str,
        token: str,
        *,
        mount: str = "transit",
        timeout: float = 5.0,
        ca_cert: Path | None = None,
    ) -> None:
        # ca_cert: trust only this PEM for https (a self-hosted OpenBao's own certificate).
        verify: ssl.SSLContext | bool = True
        if ca_cert is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_cert))
            except OSError as exc:
                raise KeyManagerUnavailableError(
                    f"OPENBAO_CA_CERT {ca_cert} unreadable: {exc.strerror or exc}"
                ) from exc
        self._client = httpx.AsyncClient(
            base_url=f"{address.rstrip('/')}/v1/",
            headers={"X-Vault-Token": token},
            timeout=timeout,
            verify=verify,
        )
        self._mount = mount

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        unwrapping: bool = False,
    ) -> dict[str, Any]:
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise KeyManagerUnavailableError(f"OpenBao unreachable: {type(exc).__name__}") from exc
        if response.status_code < 300:
            return response.json() if response.content else {}
        errors = _error_text(response)
        if response.status_code in {401, 403} or response.status_code >= 500:
            raise KeyManagerUnavailableError(f"OpenBao answered {response.status_code}: {errors}")
        if unwrapping:
            # Wrong context, tampered, retired version, destroyed key: all "not yours".
            raise UnwrapError(f"the data key did not unwrap: {errors}")
        if "not found" in errors or "no existing key" in errors:  # the latter: key config
            raise KeyNotFoundError(errors)
        raise KeyManagerError(f"OpenBao refused {path}: {errors}")

    async def create_tenant_key(self, tenant_id: UUID) -> str:
        """Create `tenant-<id>` (creating an existing key leaves it as it is)."""
        name = tenant_key_name(tenant_id)
        await self._call(
            "POST", f"{self._mount}/keys/{name}", {"type": "aes256-gcm96", "derived": True}
        )
        return name

    async def generate_data_key(self, key_ref: str, context: EncryptionContext) -> DataKey:
        """transit/datakey/plaintext: the key and its wrapped copy in one call."""
        answer = await self._call(
            "POST",
            f"{self._mount}/datakey/plaintext/{key_ref}",
            {"bits": DATA_KEY_BYTES * 8, "context": _b64(context.as_bytes())},
        )
        data = answer["data"]
        return DataKey(
            plaintext=base64.b64decode(data["plaintext"]),
            wrapped=data["ciphertext"].encode(),
        )

    async def unwrap(self, key_ref: str, wrapped: bytes, context: EncryptionContext) -> bytes:
        """transit/decrypt with the document's context."""
        answer = await self._call(
            "POST",
            f"{self._mount}/decrypt/{key_ref}",
            {"ciphertext": wrapped.decode(), "context": _b64(context.as_bytes())},
            unwrapping=True,
        )
        plaintext = base64.b64decode(answer["data"]["plaintext"])
        if len(plaintext) != DATA_KEY_BYTES:
            raise UnwrapError("the unwrapped data key has the wrong length")
        return plaintext

    async def rotate(self, key_ref: str) -> None:
        """transit/keys/:name/rotate."""
        await self._call("POST", f"{self._mount}/keys/{key_ref}/rotate")

    async def rewrap(self, key_ref: str, wrapped: bytes, context: EncryptionContext) -> bytes:
        """transit/rewrap: re-encrypted inside OpenBao under the latest version."""
        answer = await self._call(
            "POST",
            f"{self._mount}/rewrap/{key_ref}",
            {"ciphertext": wrapped.decode(), "context": _b64(context.as_bytes())},
            unwrapping=True,
        )
        return str(answer["data"]["ciphertext"]).encode()

    async def retire_old_versions(self, key_ref: str) -> None:
        """Refuse older versions, then trim them: their key material is deleted."""
        key = await self._call("GET", f"{self._mount}/keys/{key_ref}")
        latest = int(key["data"]["latest_version"])
        await self._call(
            "POST",
            f"{self._mount}/keys/{key_ref}/config",
            {"min_decryption_version": latest, "min_encryption_version": latest},
        )
        await self._call(
            "POST", f"{self._mount}/keys/{key_ref}/trim", {"min_available_version": latest}
        )

    async def destroy(self, key_ref: str) -> None:
        """Allow deletion, then delete the key and every version of it."""
        await self._call("POST", f"{self._mount}/keys/{key_ref}/config", {"deletion_allowed": True})
        await self._call("DELETE", f"{self._mount}/keys/{key_ref}")

    async def current_version(self, key_ref: str) -> int | None:
        """transit/keys/:name's latest_version."""
        key = await self._call("GET", f"{self._mount}/keys/{key_ref}")
        return int(key["data"]["latest_version"])

    def key_version(self, wrapped: bytes) -> int | None:
        """The `N` of `vault:vN:...`."""
        return wrapped_key_version(wrapped)

    async def check(self) -> None:
        """The server is unsealed, active, and accepts our token."""
        await self._call("GET", "auth/token/lookup-self")
