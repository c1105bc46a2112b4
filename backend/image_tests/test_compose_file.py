"""docker-compose.yml itself, under podman-compose, with the locally built db image supplied.

The only override is the db service's image (pgvector/pgvector cannot be pulled here): the
file's build, env_file, environment, command, ports and volumes are podman-compose's to apply.
podman-compose 1.0.3 (Debian 12) ignores `depends_on` conditions, so the test waits for the
database's healthcheck and reruns `migrate` if it started too early, the ordering compose
itself enforces.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from image_tests import podman as pm
from image_tests.conftest import API_READY_TIMEOUT_SECONDS, DB_READY_TIMEOUT_SECONDS, free_port
from image_tests.test_compose_topology import filled_env_file
from tests.test_deploy.artifacts import REPO_ROOT


class ComposeProject:
    """A copy of docker-compose.yml in a directory of its own, its .env, and the db override."""

    def __init__(self, directory: Path) -> None:
        self.name = f"imagetest{uuid.uuid4().hex[:8]}"
        self.directory = directory
        shutil.copy(REPO_ROOT / "docker-compose.yml", directory / "docker-compose.yml")
        (directory / "backend").symlink_to(pm.BACKEND_DIR)
        env_file = filled_env_file(directory)
        self.port = free_port()
        env_file.write_text(env_file.read_text().replace("\nPORT=8000\n", f"\nPORT={self.port}\n"))
        override = {"services": {"db": {"image": pm.DB_IMAGE}}}
        (directory / "db-image.override.yml").write_text(yaml.safe_dump(override))

    def compose(self, *args: str, check: bool = True) -> str:
        """Run podman-compose on the project."""
        files = ("-f", "docker-compose.yml", "-f", "db-image.override.yml")
        command = ["podman-compose", "--project-name", self.name, *files, *args]
        return pm.run(command, cwd=self.directory, check=check).stdout

    def container(self, service: str) -> str:
        """podman-compose's container name for a service."""
        return f"{self.name}_{service}_1"

    def logs(self) -> str:
        """Every service's log."""
        return "\n".join(
            f"--- {service}\n"
            + pm.run(["podman", "logs", self.container(service)], check=False).stderr
            for service in (
                "db",
                "seaweedfs",
                "openbao",
                "openbao-init",
                "migrate",
                "api",
                "worker",
            )
        )


@pytest.fixture
def project(tmp_path: Path) -> Iterator[ComposeProject]:
    """The project; `down --volumes` afterwards."""
    compose_project = ComposeProject(tmp_path)
    try:
        yield compose_project
    finally:
        compose_project.compose("down", "--volumes", "--timeout", "0", check=False)


def _healthy(container: str) -> bool:
    return pm.run(["podman", "healthcheck", "run", container], check=False).returncode == 0


def test_podman_compose_up_serves_ready(project: ComposeProject) -> None:
    project.compose("up", "--detach")

    deadline = time.monotonic() + DB_READY_TIMEOUT_SECONDS
    while not _healthy(project.container("db")):
        assert time.monotonic() < deadline, "db never healthy\n" + project.logs()
        time.sleep(1)
    migrate = project.container("migrate")
    exit_code = pm.podman("wait", migrate).strip()
    if exit_code != "0":  # started before the database accepted connections (see above)
        pm.say(f"podman-compose started migrate before db was healthy (exit {exit_code}): rerun")
        pm.podman("start", "--attach", migrate)
        exit_code = pm.podman("wait", migrate).strip()
    assert exit_code == "0", project.logs()

    deadline = time.monotonic() + API_READY_TIMEOUT_SECONDS
    url = f"http://127.0.0.1:{project.port}/api/v1/health/ready"
    while True:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "api never ready\n" + project.logs()
        time.sleep(1)
    checks = response.json()["checks"]
    assert set(checks.values()) == {"ok"}, checks
    assert {"object_storage", "kms"} <= set(checks), checks
    assert pm.podman("exec", project.container("api"), "id", "-u").strip() == "10001"
    worker = project.container("worker")
    assert pm.podman("inspect", "--format", "{{.State.Status}}", worker).strip() == "running"
