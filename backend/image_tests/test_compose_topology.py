"""docker-compose.yml's topology, container by container: db, seaweedfs, openbao, then
`openbao-init`, `migrate`, and `api` and `worker`.

The environment is exactly what compose gives the services: `.env.example` copied to `.env`
with its Required section filled in (as the README says), as `env_file`, overlaid by the
service's `environment:` block interpolated from that `.env`. The image's own user (10001) runs
the app. Then the README's quick starts run over HTTP with a token of the test's issuer: a
document registered and found, then a PDF uploaded (encrypted under the tenant's key in
OpenBao, stored in SeaweedFS), indexed by the worker, found by a question, downloaded byte for
byte, and audited.
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
from tests.test_api.test_readme_quickstart import (
    CONTENT_MARKER,
    json_outputs,
    quick_start_block,
)
from tests.test_deploy.artifacts import (
    REPO_ROOT,
    REQUIRED_SECTION,
    compose_interpolate,
    env_example_section,
    load_yaml,
)

CLIENT_ID = "tenant-docs-compose"
# Run in the api container: the app's OpenBao client checks the server with the given CA file.
OPENBAO_TLS_PROBE = """
import asyncio, os, pathlib, sys
from app.content.key_manager import KeyManagerUnavailableError
from app.content.openbao_transit import OpenBaoTransitKeyManager

async def probe(ca_cert):
    keys = OpenBaoTransitKeyManager(
        os.environ["OPENBAO_ADDR"], os.environ["OPENBAO_TOKEN"], ca_cert=pathlib.Path(ca_cert)
    )
    try:
        await keys.check()
        return "ok"
    except KeyManagerUnavailableError as error:
        return str(error)
    finally:
        await keys.close()

print(asyncio.run(probe(sys.argv[1])))
"""


def filled_env_file(directory: Path) -> Path:
    """`.env` as the README instructs: .env.example with its Required section filled in."""
    values = {
        "POSTGRES_PASSWORD": random_secret(),
        "APP_RUNTIME_PASSWORD": random_secret(),
        "CURSOR_SECRET": random_secret(),
        "OIDC_ISSUER_URL": ISSUER_URL,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "S3_ACCESS_KEY_ID": random_secret(),
        "S3_SECRET_ACCESS_KEY": random_secret(),
        "OPENBAO_TOKEN": random_secret(),
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
    """What compose hands a service: its env_file (if any), then its interpolated `environment:`."""
    dotenv = {k: v or "" for k, v in dotenv_values(env_file).items()}
    environment = {
        name: compose_interpolate(str(value), dotenv)
        for name, value in service.get("environment", {}).items()
    }
    if "env_file" not in service:
        return environment
    assert service["env_file"] == ".env"
    return {**dotenv, **environment}


def run_quick_start(block: str, token: str, pod: Pod, timeout: float) -> list[Any]:
    """A README quick-start block in bash against the pod's API; the JSON it printed."""
    script = block.replace("'<the token from the curl above>'", shlex.quote(token)).replace(
        "http://127.0.0.1:8000/", pod.base_url + "/"
    )
    shell = subprocess.run(  # noqa: S603
        ["bash", "-euo", "pipefail", "-c", script],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert shell.returncode == 0, shell.stderr + pod.logs()
    return json_outputs(shell.stdout)


@pytest.fixture
def compose_pod(
    pod_name: str, issuer: TestIssuer, tmp_path: Path
) -> Iterator[tuple[Pod, dict[str, Any], Path]]:
    """A pod named like compose's network: `db`, `seaweedfs` and `openbao` resolve in it."""
    compose = load_yaml(REPO_ROOT / "docker-compose.yml")
    services = compose["services"]
    env_file = filled_env_file(tmp_path)
    dotenv = {k: v or "" for k, v in dotenv_values(env_file).items()}
    pod = Pod(pod_name, api_port=int(dotenv["PORT"]))
    try:
        pod.create(db_host="db")
        pod.start_database(service_environment(services["db"], env_file))
        assert services["seaweedfs"]["command"] == ["/selfhost/seaweedfs.sh"]
        assert services["openbao"]["command"] == ["/selfhost/openbao.sh"]
        assert services["openbao-init"]["command"] == ["python3", "/selfhost/openbao_init.py"]
        pod.start_object_storage_and_kms(
            service_environment(services["seaweedfs"], env_file),
            service_environment(services["openbao-init"], env_file),
        )
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
    assert services["api"]["volumes"] == services["worker"]["volumes"] == ["tls:/tls:ro"]
    pod.run("api", pm.APP_IMAGE, api_env, services["api"].get("command"), extra=pod.tls_read_only())
    worker_env = service_environment(services["worker"], env_file)
    pod.run(
        "worker", pm.APP_IMAGE, worker_env, services["worker"]["command"], extra=pod.tls_read_only()
    )
    ready = pod.wait_until_ready().json()
    assert ready["status"] == "ok", ready
    assert set(ready["checks"].values()) == {"ok"}, ready

    # Production, whatever .env says (.env.example's ENVIRONMENT=development once reached the
    # image and started the dev issuer); the image's user, not root; nothing written into /app.
    assert pm.podman("exec", f"{pod.name}-api", "printenv", "ENVIRONMENT").strip() == "production"
    assert pm.podman("exec", f"{pod.name}-api", "id", "-u").strip() == "10001"
    changed = pm.podman("diff", f"{pod.name}-api").split()
    assert not [path for path in changed if path.startswith("/app")], changed

    # TLS to OpenBao is checked for real: its own certificate passes, another one does not.
    def openbao_with(ca_cert: str) -> str:
        api = f"{pod.name}-api"
        return pm.podman("exec", api, "python", "-c", OPENBAO_TLS_PROBE, ca_cert).strip()

    assert openbao_with(api_env["OPENBAO_CA_CERT"]) == "ok"
    refused = openbao_with(api_env["S3_CA_BUNDLE"])
    assert refused == "OpenBao unreachable: ConnectError", refused

    # The first tenant and admin, with the admin CLI inside the service (README step 7).
    def cli(*args: str) -> Any:
        output = pm.podman("exec", f"{pod.name}-api", "python", "-m", "app", *args, "--json")
        return json.loads(output)

    # The tenant's key is made in compose's OpenBao (its transit engine).
    tenant = cli("create-tenant", "Compose tenant")
    assert tenant["kms_key_arn"] == f"tenant-{tenant['id']}", tenant
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

    registered, listed, searched, audited = run_quick_start(quick_start_block(), token, pod, 60)
    assert registered["status"] == "processing", registered
    assert registered["has_embedding"] is True
    assert registered["id"] in [item["id"] for item in listed["items"]]
    assert searched["items"][0]["document"]["id"] == registered["id"]
    creations = [item for item in audited["items"] if item["resource_id"] == registered["id"]]
    assert [item["action"] for item in creations] == ["document.create"]

    # Content through the deployment: stored encrypted in SeaweedFS under the tenant's OpenBao
    # key, indexed by the `worker` service, found by a paraphrase, downloaded byte for byte.
    block = quick_start_block(CONTENT_MARKER)
    uploaded, searchable, found, same, audited = run_quick_start(block, token, pod, 240)
    assert uploaded["status"] == "processing", uploaded
    assert len(uploaded["content_sha256"]) == 64
    assert searchable == {"status": "completed"}, pod.logs()
    assert found["items"][0]["document"]["id"] == uploaded["id"], found
    assert "follow up in clinic" in found["items"][0]["snippet"], found
    assert same == {"same_bytes": True}
    assert [item["action"] for item in audited["items"]] == [
        "document.content_download",
        "document.ingest",
        "document.content_upload",
        "document.create",
    ]
