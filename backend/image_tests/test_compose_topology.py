"""docker-compose.yml's topology, container by container: db, then `migrate`, then `api`.

The environment is exactly what compose gives the services: `.env.example` copied to `.env`
with its Required section filled in (as the README says), as `env_file`, overlaid by the
service's `environment:` block interpolated from that `.env`. The image's own user (10001) runs
them. Then the README's quick start runs over HTTP with a token of the test's issuer.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

from image_tests import podman as pm
from image_tests.conftest import ISSUER_URL, Pod, random_secret
from testkit.auth_helpers import TestIssuer
from tests.test_api.test_readme_quickstart import json_outputs, quick_start_block
from tests.test_deploy.artifacts import (
    REPO_ROOT,
    REQUIRED_SECTION,
    compose_interpolate,
    env_example_section,
    load_yaml,
)

CLIENT_ID = "tenant-docs-compose"


def filled_env_file(directory: Path) -> Path:
    """`.env` as the README instructs: .env.example with its Required section filled in."""
    values = {
        "POSTGRES_PASSWORD": random_secret(),
        "APP_RUNTIME_PASSWORD": random_secret(),
        "CURSOR_SECRET": random_secret(),
        "OIDC_ISSUER_URL": ISSUER_URL,
        "OIDC_CLIENT_ID": CLIENT_ID,
    }
    required = env_example_section(REQUIRED_SECTION)
    unknown = set(required) - set(values)
    assert not unknown, f"the test does not know what to fill in for {unknown}"
    lines = []
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        name = line.lstrip("# ").split("=", 1)[0]
        if "=" in line and name in required:
            line = f"{name}={values[name]}"
        lines.append(line)
    env_file = directory / ".env"
    env_file.write_text("\n".join(lines) + "\n")
    return env_file


def service_environment(service: dict[str, Any], env_file: Path) -> dict[str, str]:
    """What compose hands a service: its env_file, then its interpolated `environment:`."""
    dotenv = {k: v or "" for k, v in dotenv_values(env_file).items()}
    assert service["env_file"] == ".env"
    environment = {
        name: compose_interpolate(str(value), dotenv)
        for name, value in service["environment"].items()
    }
    return {**dotenv, **environment}


@pytest.fixture
def compose_pod(
    pod_name: str, issuer: TestIssuer, tmp_path: Path
) -> Iterator[tuple[Pod, dict[str, Any], Path]]:
    """A pod named like compose's network: `db` resolves to the pod's database."""
    compose = load_yaml(REPO_ROOT / "docker-compose.yml")
    env_file = filled_env_file(tmp_path)
    dotenv = {k: v or "" for k, v in dotenv_values(env_file).items()}
    pod = Pod(pod_name, api_port=int(dotenv["PORT"]))
    try:
        pod.create(db_host="db")
        db_env = {
            name: compose_interpolate(str(value), dotenv)
            for name, value in compose["services"]["db"]["environment"].items()
        }
        pod.start_database(db_env)
        pod.start_issuer(issuer, tmp_path / "issuer")
        yield pod, compose, env_file
    finally:
        pod.remove()


def test_migrate_then_api_serve_ready_and_the_readme_quick_start(
    compose_pod: tuple[Pod, dict[str, Any], Path], issuer: TestIssuer
) -> None:
    pod, compose, env_file = compose_pod
    services = compose["services"]
    migrate_env = service_environment(services["migrate"], env_file)
    pod.run("migrate", pm.APP_IMAGE, migrate_env, services["migrate"]["command"], detach=False)

    api_env = service_environment(services["api"], env_file)
    pod.run("api", pm.APP_IMAGE, api_env, services["api"].get("command"))
    ready = pod.wait_until_ready().json()
    assert ready["status"] == "ok", ready
    assert set(ready["checks"].values()) == {"ok"}, ready

    # Production, whatever .env says (.env.example's ENVIRONMENT=development once reached the
    # image and started the dev issuer); the image's user, not root; nothing written into /app.
    assert pm.podman("exec", f"{pod.name}-api", "printenv", "ENVIRONMENT").strip() == "production"
    assert pm.podman("exec", f"{pod.name}-api", "id", "-u").strip() == "10001"
    changed = pm.podman("diff", f"{pod.name}-api").split()
    assert not [path for path in changed if path.startswith("/app")], changed

    # The first tenant and admin, with the admin CLI inside the service (README step 7).
    def cli(*args: str) -> Any:
        output = pm.podman("exec", f"{pod.name}-api", "python", "-m", "app", *args, "--json")
        return json.loads(output)

    # No KMS in this topology yet (issue 17's compose services): a tenant without a key.
    tenant = cli("create-tenant", "Compose tenant", "--without-key")
    user = cli(
        "create-user",
        "--tenant",
        tenant["id"],
        "--email",
        "admin@example.org",
        "--external-idp-id",
        "idp|compose-admin",
        "--role",
        "admin",
    )
    issuer.audience = api_env["OIDC_CLIENT_ID"]
    token = issuer.mint(tenant_id=tenant["id"], subject=user["external_idp_id"])
    script = (
        quick_start_block()
        .replace("'<the token from the curl above>'", shlex.quote(token))
        .replace("http://127.0.0.1:8000/", pod.base_url + "/")
    )
    shell = subprocess.run(  # noqa: S603
        ["bash", "-euo", "pipefail", "-c", script],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shell.returncode == 0, shell.stderr + pod.logs()
    registered, listed, searched, audited = json_outputs(shell.stdout)
    assert registered["status"] == "processing", registered
    assert registered["has_embedding"] is True
    assert registered["id"] in [item["id"] for item in listed["items"]]
    assert searched["items"][0]["document"]["id"] == registered["id"]
    creations = [item for item in audited["items"] if item["resource_id"] == registered["id"]]
    assert [item["action"] for item in creations] == ["document.create"]
