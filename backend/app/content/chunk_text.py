"""Chunk text sealed under the document's own content data key (never stored in the clear).

A document's chunks are encrypted with a key derived (HKDF-SHA256, its own `info`) from the
data key that encrypts the document's content, bound to the tenant and the document like the
content is. So every rule of the content's key applies to its chunks without another KMS call
or another wrapped key: rotation rewraps the one data key; destroying the tenant's key
(crypto-shredding) makes chunks as unreadable as content. Each chunk is AES-256-GCM with a
random 96-bit nonce and its ordinal in the associated data, so a chunk moved to another
position, document or tenant fails to open.

    sealed = nonce (12) || AES-256-GCM(chunk key, nonce, text, AAD = context || ordinal)
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.content.envelope import ContentIntegrityError
from app.content.key_manager import DATA_KEY_BYTES, EncryptionContext

_INFO = b"tenant-docs chunk text v1\x00"
NONCE_BYTES = 12


class ChunkCipher:
    """Seals and opens one document's chunk texts (the plaintext data key stays in memory)."""

    def __init__(self, data_key: bytes, context: EncryptionContext) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=DATA_KEY_BYTES,
            salt=None,
            info=_INFO + context.as_bytes(),
        ).derive(data_key)
        self._aead = AESGCM(derived)
        self._context = context.as_bytes()

    def _aad(self, ordinal: int) -> bytes:
        return self._context + b"/chunk:" + str(ordinal).encode()

    def seal(self, ordinal: int, text: str) -> bytes:
        """The sealed form of chunk `ordinal`'s text."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, text.encode(), self._aad(ordinal))

    def open(self, ordinal: int, sealed: bytes) -> str:
        """The text of chunk `ordinal` (ContentIntegrityError if it isn't this one's)."""
        try:
            plain = self._aead.decrypt(
                sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], self._aad(ordinal)
            )
        except (InvalidTag, ValueError):
            raise ContentIntegrityError("chunk text failed authentication") from None
        return plain.decode()
