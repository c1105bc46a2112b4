"""One-shot set-up of docker compose's OpenBao: initialise, unseal, transit, the app's token.

Run by the `openbao-init` service at every `docker compose up` (idempotent): the first time it
initialises OpenBao (one unseal key share) and keeps the unseal key and root token in /secrets,
a volume no other service mounts; every time it unseals, enables the transit engine, writes
the `tenant-docs-transit` policy (transit keys named tenant-*, nothing else) and makes sure
OPENBAO_TOKEN exists as a token with only that policy. Whoever reads /secrets holds every
tenant key: this is for self-hosting; AWS KMS is the production recommendation
(backend/docs/ENCRYPTION.md). Standard library only: it runs in the selfhost image.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ADDRESS = os.environ.get("OPENBAO_ADDR", "https://openbao:8200").rstrip("/")
CA_CERT = Path(os.environ.get("OPENBAO_CA_CERT", "/tls/openbao.crt"))
SECRETS = Path(os.environ.get("OPENBAO_INIT_FILE", "/secrets/init.json"))
APP_TOKEN = os.environ["OPENBAO_TOKEN"]
POLICY_NAME = "tenant-docs-transit"
# What app/content/openbao_transit.py calls, on tenant keys only, and its readiness check.
POLICY = """
path "transit/keys/tenant-*" { capabilities = ["create", "read", "update", "delete"] }
path "transit/datakey/plaintext/tenant-*" { capabilities = ["update"] }
path "transit/decrypt/tenant-*" { capabilities = ["update"] }
path "transit/rewrap/tenant-*" { capabilities = ["update"] }
"""
# The app does not renew its token: it lives ten years (the token mount's ceiling is raised to
# match) and is re-created by the next `docker compose up` if it ever expired.
TOKEN_TTL = "87600h"  # noqa: S105 - a lifetime, not a secret
WAIT_SECONDS = 120
UNSENT_RETRY_SECONDS = 60  # a call whose request could not leave (DNS, refused) is retried


def say(message: str) -> None:
    """One line on the service's log."""
    print(f"openbao-init: {message}", flush=True)


def call(method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """One API call: (status, parsed JSON or None)."""
    request = urllib.request.Request(  # noqa: S310 - https to the configured OpenBao
        f"{ADDRESS}/v1/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"X-Vault-Token": token} if token else {},
    )
    context = ssl.create_default_context(cafile=str(CA_CERT))
    deadline = time.monotonic() + UNSENT_RETRY_SECONDS
    while True:
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            return error.code, json.loads(raw) if raw else None
        except urllib.error.URLError as error:
            # Retried only when the request never left: the container network's DNS failed a
            # lookup once in CI, mid-initialisation. A request that may have been sent is
            # never repeated (a second `sys/init` would lose the first's unseal key).
            unsent = isinstance(error.reason, socket.gaierror | ConnectionRefusedError)
            if not unsent or time.monotonic() > deadline:
                raise
            time.sleep(1)


def ok(answer: tuple[int, Any], what: str) -> Any:
    """The answer's body, or exit naming what failed."""
    status, body = answer
    if status >= 300:
        sys.exit(f"openbao-init: {what} failed: {status} {body}")
    return body


def wait_for_server() -> dict[str, Any]:
    """Seal status once the server answers over TLS (its certificate appears first)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            if CA_CERT.is_file():
                status, body = call("GET", "sys/seal-status")
                if status == 200:
                    return dict(body)
        except OSError as error:
            last = error
        else:
            last = None
        if time.monotonic() > deadline:
            sys.exit(f"openbao-init: {ADDRESS} did not answer within {WAIT_SECONDS} s ({last})")
        time.sleep(1)


def initialise_and_unseal(seal: dict[str, Any]) -> str:
    """Initialise the first time, unseal, wait until active; the root token."""
    if not seal["initialized"]:
        keys = ok(call("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1}), "init")
        SECRETS.parent.mkdir(parents=True, exist_ok=True)
        saved = {"unseal_key": keys["keys_base64"][0], "root_token": keys["root_token"]}
        descriptor = os.open(SECRETS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(saved, file)
        say("initialised; unseal key and root token kept in the openbao-init volume")
    if not SECRETS.is_file():
        sys.exit(
            f"openbao-init: OpenBao is initialised but {SECRETS} is missing: without its unseal"
            " key the tenant keys cannot be recovered"
        )
    saved = json.loads(SECRETS.read_text())
    if call("GET", "sys/seal-status")[1]["sealed"]:
        ok(call("PUT", "sys/unseal", {"key": saved["unseal_key"]}), "unseal")
        say("unsealed")
    deadline = time.monotonic() + WAIT_SECONDS
    while call("GET", "sys/health")[0] != 200:  # 200: initialised, unsealed, active
        if time.monotonic() > deadline:
            sys.exit("openbao-init: OpenBao did not become active after unsealing")
        time.sleep(0.5)
    return str(saved["root_token"])


def configure(root: str) -> None:
    """Transit engine, the app's policy, and the app's token (OPENBAO_TOKEN)."""
    mounts = ok(call("GET", "sys/mounts", token=root), "list mounts")
    if "transit/" not in mounts["data"]:
        ok(call("POST", "sys/mounts/transit", {"type": "transit"}, root), "enable transit")
        say("transit engine enabled")
    ok(call("PUT", f"sys/policies/acl/{POLICY_NAME}", {"policy": POLICY}, root), "write policy")
    tune = {"max_lease_ttl": TOKEN_TTL, "default_lease_ttl": TOKEN_TTL}
    ok(call("POST", "sys/auth/token/tune", tune, root), "tune the token mount")
    status, _ = call("POST", "auth/token/lookup", {"token": APP_TOKEN}, root)
    if status == 200:
        say("the app's token exists")
        return
    token = {
        "id": APP_TOKEN,
        "policies": [POLICY_NAME],
        "no_default_policy": False,
        "no_parent": True,
        "ttl": TOKEN_TTL,
        "renewable": True,
        "display_name": "tenant-docs-app",
    }
    ok(call("POST", "auth/token/create-orphan", token, root), "create the app's token")
    say(f"the app's token created with policy {POLICY_NAME}")


def main() -> None:
    """Wait, initialise or unseal, configure."""
    configure(initialise_and_unseal(wait_for_server()))
    say("ready")


if __name__ == "__main__":
    main()
