"""The README's Railway steps: only the variables they list, pre-deploy command, start commands.

The Postgres service gets the variables of the README's Database step, the backend those of
its API step (placeholders filled in, `${{...}}` references resolved as Railway would, plus the
PORT Railway injects); railway.json's preDeployCommand runs to completion, then its
startCommand serves, and the readiness route Railway health-checks answers 200 with the object
storage and the KMS checked; the worker service (railway.worker.json) runs beside it.

The README points production at AWS S3 and AWS KMS, which this machine cannot reach: the test
swaps only where they are (endpoint, KMS provider, credentials) for the SeaweedFS and OpenBao
of compose's selfhost image in the pod. Every other variable is the README's.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_tests import podman as pm
from image_tests.conftest import ISSUER_URL, Pod, random_secret
from testkit.auth_helpers import TestIssuer
from tests.test_deploy.artifacts import (
    README_RAILWAY_API,
    README_RAILWAY_DATABASE,
    load_json,
    readme_railway_variables,
)

PRIVATE_DOMAIN = "postgres.railway.internal"
RAILWAY_PORT = 8090  # Railway picks the port and injects it; not the image's default 8000.
# (Nor 8080: SeaweedFS's volume server listens there on the pod's shared loopback.)

# What the user types for each `<...>` placeholder of the README's Railway steps.
PLACEHOLDER_VALUES = {
    "POSTGRES_PASSWORD": random_secret(),
    "APP_RUNTIME_PASSWORD": random_secret(),
    "CURSOR_SECRET": random_secret(),
    "OIDC_ISSUER_URL": ISSUER_URL,
    "OIDC_CLIENT_ID": "tenant-docs-railway",
    "ALLOWED_ORIGINS": "https://app.example.org",
    "S3_BUCKET": "tenant-docs-railway",
    "AWS_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLERAILWAY01",
    "AWS_SECRET_ACCESS_KEY": random_secret(),
}

# AWS S3 and AWS KMS, as the README sets them, replaced by the pod's SeaweedFS and OpenBao.
OPENBAO_TOKEN = random_secret()
AWS_STAND_INS = {
    "S3_ENDPOINT_URL": "https://seaweedfs:8333",
    "S3_CA_BUNDLE": "/tls/seaweedfs.crt",
    "S3_ACCESS_KEY_ID": PLACEHOLDER_VALUES["AWS_ACCESS_KEY_ID"],
    "S3_SECRET_ACCESS_KEY": PLACEHOLDER_VALUES["AWS_SECRET_ACCESS_KEY"],
    "KMS_PROVIDER": "openbao",
    "OPENBAO_ADDR": "https://openbao:8200",
    "OPENBAO_CA_CERT": "/tls/openbao.crt",
    "OPENBAO_TOKEN": OPENBAO_TOKEN,
}


def resolve(variables: dict[str, str], references: dict[str, dict[str, str]]) -> dict[str, str]:
    """Fill `<...>` placeholders and resolve `${{NAME}}` / `${{Service.NAME}}` like Railway."""
    resolved: dict[str, str] = {}
    for name, value in variables.items():
        if value.startswith("<"):
            assert name in PLACEHOLDER_VALUES, f"the test does not know what to type for {name}"
            value = PLACEHOLDER_VALUES[name]

        def reference(match: re.Match[str]) -> str:
            service, _, key = match.group(1).rpartition(".")
            scope = references[service] if service else {**references[""], **resolved}
            return scope[key]

        resolved[name] = re.sub(r"\$\{\{([A-Za-z_.]+)\}\}", reference, value)
    return resolved


@pytest.fixture
def railway_pod(pod_name: str, issuer: TestIssuer, tmp_path: Path) -> Iterator[Pod]:
    """The Postgres service reachable under its private domain, and the test's issuer."""
    pod = Pod(pod_name, api_port=RAILWAY_PORT)
    try:
        pod.create(db_host=PRIVATE_DOMAIN)
        yield pod
    finally:
        pod.remove()


def test_pre_deploy_then_start_command_serve_ready(
    railway_pod: Pod, issuer: TestIssuer, tmp_path: Path
) -> None:
    railway = {"": {"RAILWAY_PRIVATE_DOMAIN": PRIVATE_DOMAIN}}
    postgres = resolve(readme_railway_variables(README_RAILWAY_DATABASE), railway)
    railway_pod.start_database({k: v for k, v in postgres.items() if k != "DATABASE_URL"})
    railway_pod.start_issuer(issuer, tmp_path / "issuer")

    backend = resolve(
        readme_railway_variables(README_RAILWAY_API), {**railway, "Postgres": postgres}
    )
    backend["PORT"] = str(RAILWAY_PORT)
    assert backend["KMS_PROVIDER"] == "aws-kms", "the README's production KMS is AWS KMS"
    assert "S3_ENDPOINT_URL" not in backend, "the README's production bucket is AWS S3"
    backend.update(AWS_STAND_INS)
    railway_pod.start_object_storage_and_kms(
        {
            "S3_BUCKET": backend["S3_BUCKET"],
            "S3_ACCESS_KEY_ID": backend["S3_ACCESS_KEY_ID"],
            "S3_SECRET_ACCESS_KEY": backend["S3_SECRET_ACCESS_KEY"],
        },
        {"OPENBAO_TOKEN": OPENBAO_TOKEN},
    )
    tls = railway_pod.tls_read_only()
    deploy = load_json("railway.json")["deploy"]
    for step, command in enumerate(deploy["preDeployCommand"]):
        railway_pod.run(
            f"pre-deploy-{step}", pm.APP_IMAGE, backend, shlex.split(command), detach=False
        )
    railway_pod.run(
        "backend", pm.APP_IMAGE, backend, shlex.split(deploy["startCommand"]), extra=tls
    )
    # The worker service: the same image and variables (template.json mirrors the backend's).
    worker = load_json("railway.worker.json")["deploy"]
    railway_pod.run("worker", pm.APP_IMAGE, backend, shlex.split(worker["startCommand"]), extra=tls)

    assert deploy["healthcheckPath"] == "/api/v1/health/ready"
    ready = railway_pod.wait_until_ready().json()
    assert set(ready["checks"].values()) == {"ok"}, ready
    assert {"object_storage", "kms"} <= set(ready["checks"]), ready
    state = pm.podman("inspect", "--format", "{{.State.Status}}", f"{railway_pod.name}-worker")
    assert state.strip() == "running", railway_pod.logs()
