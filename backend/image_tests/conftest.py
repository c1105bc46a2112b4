"""Fixtures of `make test-image`: the images, and a pod per deploy topology.

Each topology runs in its own pod, so its containers share one network namespace: the database
listens on the pod's 127.0.0.1:5432 under the host name the deploy files use (`db` for compose,
Railway's private domain), SeaweedFS and OpenBao (compose's selfhost image) under theirs
(`seaweedfs`, `openbao`: https with the certificates they write to the pod's `tls` volume), the
test's OIDC issuer on the pod's 127.0.0.1 (loopback http, which production accepts), and only
the API's port is published to the host.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from image_tests import podman as pm
from testkit.auth_helpers import TestIssuer

ISSUER_PORT = 9000
ISSUER_URL = f"http://127.0.0.1:{ISSUER_PORT}"
DB_READY_TIMEOUT_SECONDS = 60
# docker-compose.yml's service names for SeaweedFS and OpenBao (their certificates name them).
SELFHOST_HOSTS = ("seaweedfs", "openbao")
API_READY_TIMEOUT_SECONDS = 90


@pytest.fixture(scope="session", autouse=True)
def images() -> None:
    """podman, the base image (reused when present), then the app, selfhost and db images."""
    os.environ["CONTAINERS_CONF"] = str(pm.IMAGE_TESTS_DIR / "containers.conf")
    pm.ensure_tools()
    pm.ensure_base_image()
    builds = (pm.build_app_image, pm.build_selfhost_image, pm.build_db_image)
    with ThreadPoolExecutor(max_workers=len(builds)) as pool:
        for built in [pool.submit(build) for build in builds]:
            built.result()


def free_port() -> int:
    """A TCP port on the host's loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def random_secret() -> str:
    """Letters and digits, as the docs ask for passwords that go into URLs."""
    return secrets.token_hex(16)


@dataclass
class Pod:
    """A pod: its containers share 127.0.0.1; `host_port` on the host reaches `api_port` in it."""

    name: str
    api_port: int
    host_port: int = field(default_factory=free_port)
    containers: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The API as seen from the host."""
        return f"http://127.0.0.1:{self.host_port}"

    @property
    def tls_volume(self) -> str:
        """The pod's named volume for the servers' certificates (compose's `tls`)."""
        return f"{self.name}-tls"

    def create(self, db_host: str) -> None:
        """Create the pod, with `db_host`, `seaweedfs` and `openbao` on the pod's loopback."""
        hosts = [f"{host}:127.0.0.1" for host in (db_host, *SELFHOST_HOSTS)]
        pm.podman(
            "pod",
            "create",
            "--name",
            self.name,
            *(option for host in hosts for option in ("--add-host", host)),
            "--publish",
            f"127.0.0.1:{self.host_port}:{self.api_port}",
        )

    def run(
        self,
        role: str,
        image: str,
        env: dict[str, str],
        command: list[str] | None = None,
        *,
        detach: bool = True,
        extra: tuple[str, ...] = (),
    ) -> str:
        """Start a container of the pod (detached) or run it to completion; return its output."""
        name = f"{self.name}-{role}"
        self.containers.append(name)
        args = ["run", "--pod", self.name, "--name", name, *extra]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        args += ["--detach"] if detach else []
        return pm.podman(*args, image, *(command or []))

    def logs(self) -> str:
        """Every container's log, for a failure message."""
        return "\n".join(
            f"--- {name}\n{pm.run(['podman', 'logs', name], check=False).stderr}"
            f"{pm.run(['podman', 'logs', name], check=False).stdout}"
            for name in self.containers
        )

    def remove(self) -> None:
        """Remove the pod, its containers and their anonymous volumes."""
        # Throw-away containers: no grace period (--time 0).
        if self.containers:
            pm.remove_quietly("rm", "--force", "--volumes", "--time", "0", *self.containers)
        pm.remove_quietly("pod", "rm", "--force", "--time", "0", self.name)
        pm.remove_quietly("volume", "rm", "--force", self.tls_volume)

    def start_object_storage_and_kms(
        self, seaweedfs_env: dict[str, str], openbao_init_env: dict[str, str]
    ) -> None:
        """SeaweedFS and OpenBao as compose runs them; then `openbao-init` to completion."""
        tls = ("--volume", f"{self.tls_volume}:/tls")
        self.run(
            "seaweedfs",
            pm.SELFHOST_IMAGE,
            seaweedfs_env,
            ["/selfhost/seaweedfs.sh"],
            extra=(*tls, "--volume", "/data"),
        )
        self.run(
            "openbao",
            pm.SELFHOST_IMAGE,
            {},
            ["/selfhost/openbao.sh"],
            extra=(*tls, "--volume", "/data"),
        )
        self.run(
            "openbao-init",
            pm.SELFHOST_IMAGE,
            openbao_init_env,
            ["python3", "/selfhost/openbao_init.py"],
            detach=False,
            extra=("--volume", f"{self.tls_volume}:/tls:ro", "--volume", "/secrets"),
        )

    def tls_read_only(self) -> tuple[str, ...]:
        """The `--volume` option that gives an app container the servers' certificates."""
        return ("--volume", f"{self.tls_volume}:/tls:ro")

    def start_database(self, env: dict[str, str]) -> None:
        """The pgvector stand-in, configured like the deploy file's database service."""
        self.run("db", pm.DB_IMAGE, env, extra=("--volume", "/var/lib/postgresql/data"))
        deadline = time.monotonic() + DB_READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            ready = pm.run(["podman", "exec", f"{self.name}-db", "pg_isready"], check=False)
            if ready.returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError("the database did not become ready\n" + self.logs())

    def start_issuer(self, issuer: TestIssuer, directory: Path) -> None:
        """Serve `issuer`'s discovery document and JWKS over HTTP on the pod's loopback."""
        (directory / ".well-known").mkdir(parents=True)
        (directory / ".well-known" / "openid-configuration").write_text(
            json.dumps(issuer.discovery())
        )
        (directory / "jwks.json").write_text(json.dumps(issuer.jwks()))
        self.run(
            "issuer",
            pm.BASE_IMAGE,
            {},
            ["python3", "-m", "http.server", str(ISSUER_PORT), "--bind", "127.0.0.1"],
            extra=("--volume", f"{directory}:/srv:ro", "--workdir", "/srv"),
        )

    def wait_until_ready(self) -> httpx.Response:
        """Poll the readiness route until it answers 200 (or fail with the logs)."""
        deadline = time.monotonic() + API_READY_TIMEOUT_SECONDS
        last: object = None
        while time.monotonic() < deadline:
            try:
                response = httpx.get(self.base_url + "/api/v1/health/ready", timeout=5)
                if response.status_code == 200:
                    return response
                last = f"{response.status_code} {response.text}"
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.5)
        raise AssertionError(f"not ready: {last}\n{self.logs()}")


@pytest.fixture
def pod_name() -> str:
    """A name no other run uses."""
    return f"image-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def issuer() -> TestIssuer:
    """A token issuer the test controls, at the URL it is served on inside each pod."""
    return TestIssuer(ISSUER_URL)
