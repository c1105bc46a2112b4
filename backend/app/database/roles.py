"""Names of the database roles, and the SCRAM verifier used to give the runtime role a password."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

RUNTIME_ROLE = "app_runtime"
"""Every request transaction runs as this role: not superuser, not owner, no BYPASSRLS."""

ADMIN_ROLE = "app_admin"
"""Provisioning role (BYPASSRLS): only the admin CLI and `make run`'s demo seeding use it."""

_SCRAM_ITERATIONS = 4096


def scram_sha256_verifier(password: str) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier for `password` (RFC 5802/7677).

    Sending the verifier instead of the password keeps the plaintext out of the server's
    statement log.
    """
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
