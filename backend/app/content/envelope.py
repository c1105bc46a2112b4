"""Envelope encryption of document content, streamed in fixed-size authenticated segments.

Each object gets a fresh 256-bit data key from the tenant's key manager (wrapped copy stored
with the document). The content is encrypted with AES-256-GCM in the segmented construction of
Tink's AES-GCM-HKDF streaming AEAD and of the STREAM construction (Hoang, Reyhanitabar, Rogaway
and Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015):

    object  = header || segment_0 || ... || segment_n
    header  = MAGIC (4: b"TDC" + version 1) || salt (32) || nonce_prefix (7)
    key     = HKDF-SHA256(data key, salt, info = INFO || "tenant:<id>/document:<id>")
    segment = AES-256-GCM(key, nonce = nonce_prefix || index (4, BE) || last (1), AAD = header)

Every plaintext segment is SEGMENT_BYTES long except the last (0..SEGMENT_BYTES), which alone
has the `last` flag. So: dropping trailing segments fails (the new last one was sealed as not
last), reordering fails (the index is in the nonce), a changed header fails (it is the AAD),
and the same bytes under another tenant's or document's context fail (a different key). Memory
is O(segment) both ways. A reader releases each segment only once its tag verified, so a
tampered object yields a verified prefix and then ContentIntegrityError, never wrong bytes.

Hand-written over `cryptography`'s AESGCM rather than Tink's Python streaming AEAD, whose API
is synchronous file objects around a keyset of its own; the construction is the same.
The plaintext data key lives only in memory, is never logged, and is dropped after use.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.content.key_manager import DATA_KEY_BYTES, EncryptionContext, KeyManager

MAGIC = b"TDC\x01"
SALT_BYTES = 32
NONCE_PREFIX_BYTES = 7
HEADER_BYTES = len(MAGIC) + SALT_BYTES + NONCE_PREFIX_BYTES
SEGMENT_BYTES = 64 * 1024
TAG_BYTES = 16
SEALED_SEGMENT_BYTES = SEGMENT_BYTES + TAG_BYTES
_MAX_SEGMENTS = 2**32
_INFO = b"tenant-docs content v1\x00"


class ContentIntegrityError(Exception):
    """The stored content is not what was sealed for this document (tampered, truncated,
    reordered, another document's or tenant's); no bytes past the last verified segment."""


def sealed_size(plaintext_size: int) -> int:
    """The ciphertext length of a plaintext of `plaintext_size` bytes."""
    segments = max(1, -(-plaintext_size // SEGMENT_BYTES))
    return HEADER_BYTES + plaintext_size + segments * TAG_BYTES


def _segment_cipher(data_key: bytes, salt: bytes, context: EncryptionContext) -> AESGCM:
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError("a data key is 32 bytes")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=DATA_KEY_BYTES,
        salt=salt,
        info=_INFO + context.as_bytes(),
    )
    return AESGCM(hkdf.derive(data_key))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= _MAX_SEGMENTS:
        raise ValueError("object too large for this format")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


async def encrypt_stream(
    plaintext: AsyncIterable[bytes], data_key: bytes, context: EncryptionContext
) -> AsyncIterator[bytes]:
    """Yield the header, then one sealed segment per SEGMENT_BYTES of `plaintext`."""
    salt = os.urandom(SALT_BYTES)
    prefix = os.urandom(NONCE_PREFIX_BYTES)
    header = MAGIC + salt + prefix
    cipher = _segment_cipher(data_key, salt, context)
    yield header
    pending = bytearray()
    index = 0
    async for chunk in plaintext:
        pending += chunk
        # Strictly more than a segment: only then is this segment known not to be the last.
        while len(pending) > SEGMENT_BYTES:
            segment = bytes(pending[:SEGMENT_BYTES])
            del pending[:SEGMENT_BYTES]
            yield cipher.encrypt(_nonce(prefix, index, last=False), segment, header)
            index += 1
    yield cipher.encrypt(_nonce(prefix, index, last=True), bytes(pending), header)


async def decrypt_stream(
    sealed: AsyncIterable[bytes], data_key: bytes, context: EncryptionContext
) -> AsyncIterator[bytes]:
    """Yield the plaintext of each segment once verified; ContentIntegrityError otherwise."""
    pending = bytearray()
    header: bytes | None = None
    cipher: AESGCM | None = None
    prefix = b""
    index = 0

    def open_segment(segment: bytes, last: bool) -> bytes:
        assert cipher is not None
        assert header is not None
        try:
            return cipher.decrypt(_nonce(prefix, index, last), segment, header)
        except InvalidTag:
            raise ContentIntegrityError(
                f"segment {index} failed authentication (tampered, truncated, reordered, "
                "or not this document's content)"
            ) from None

    async for chunk in sealed:
        pending += chunk
        if header is None:
            if len(pending) < HEADER_BYTES:
                continue
            header = bytes(pending[:HEADER_BYTES])
            del pending[:HEADER_BYTES]
            if not header.startswith(MAGIC):
                raise ContentIntegrityError("not content sealed by this format (bad header)")
            salt = header[len(MAGIC) : len(MAGIC) + SALT_BYTES]
            prefix = header[len(MAGIC) + SALT_BYTES :]
            cipher = _segment_cipher(data_key, salt, context)
        while len(pending) > SEALED_SEGMENT_BYTES:
            segment = bytes(pending[:SEALED_SEGMENT_BYTES])
            del pending[:SEALED_SEGMENT_BYTES]
            yield open_segment(segment, last=False)
            index += 1
    if header is None or len(pending) < TAG_BYTES:
        raise ContentIntegrityError("content truncated")
    yield open_segment(bytes(pending), last=True)


@dataclass(frozen=True)
class SealedContent:
    """An object being sealed: store `wrapped_key` with the document, `chunks` in storage."""

    wrapped_key: bytes
    chunks: AsyncIterator[bytes]


async def seal(
    keys: KeyManager,
    key_ref: str,
    context: EncryptionContext,
    plaintext: AsyncIterable[bytes],
) -> SealedContent:
    """Ask for a fresh data key for this document and return its sealed stream."""
    data_key = await keys.generate_data_key(key_ref, context)
    return SealedContent(
        wrapped_key=data_key.wrapped,
        chunks=encrypt_stream(plaintext, data_key.plaintext, context),
    )


async def unseal(
    keys: KeyManager,
    key_ref: str,
    wrapped_key: bytes,
    context: EncryptionContext,
    sealed: AsyncIterable[bytes],
) -> AsyncIterator[bytes]:
    """Unwrap the document's data key (UnwrapError now) and return the plaintext stream."""
    data_key = await keys.unwrap(key_ref, wrapped_key, context)
    return decrypt_stream(sealed, data_key, context)
