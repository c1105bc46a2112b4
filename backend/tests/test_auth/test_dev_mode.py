"""Dev mode: the app as its own issuer, `python -m app run`'s curl, and refusal in production."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
import pytest

from app.auth.dev_issuer import DEV_ISSUER, dev_issuer_for
from app.content.embedded_openbao import EmbeddedOpenBao
from app.core.config import BACKEND_DIR, Settings, SettingsError, load_settings
from app.database import Database
from app.main import create_app
from app.services.demo import DEMO_EMAIL
from testkit.auth_helpers import IssuerServer, bearer
from tests.conftest import MakeCaller, MigratedDatabase
from tests.dev_server import dev_server
from tests.test_auth.conftest import assert_unauthorized
from tests.test_cli.conftest import cli_environment


@pytest.fixture
def dev_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Settings of a developer's machine: no IdP configured, a fresh dev key."""
    return settings.model_copy(
        update={
            "ENVIRONMENT": "development",
            "OIDC_ISSUER_URL": None,
            "OIDC_CLIENT_ID": None,
            "DEV_ISSUER_KEY_FILE": tmp_path / "dev" / "signing-key.pem",
        }
    )


async def test_dev_mode_accepts_its_own_tokens_and_serves_its_keys(
    dev_settings: Settings, database: Database, make_caller: MakeCaller
) -> None:
    caller = await make_caller(role="admin")
    issuer = dev_issuer_for(dev_settings)
    token = issuer.mint(
        subject=str(caller.user.external_idp_id),
        tenant_id=caller.tenant.id,
        tenant_claim="tenant_id",
    )
    app = create_app(dev_settings, database)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
    ) as http:
        me = await http.get("/api/v1/me", headers=bearer(token))
        assert me.status_code == 200, me.text
        assert me.json()["user"]["id"] == str(caller.user.id)
        # Another issuer's tokens mean nothing here.
        assert_unauthorized(await http.get("/api/v1/me", headers=caller.headers), "invalid")

        discovery = (await http.get("/api/v1/dev/.well-known/openid-configuration")).json()
        assert discovery["issuer"] == DEV_ISSUER
        assert discovery["jwks_uri"] == "http://127.0.0.1:8000/api/v1/dev/jwks.json"
        jwks = (await http.get("/api/v1/dev/jwks.json")).json()
    # What the app serves is enough for any other service to verify the dev tokens.
    public_key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(token, public_key, algorithms=["ES256"], audience=issuer.audience)
    assert claims["tenant_id"] == str(caller.tenant.id)
    assert "d" not in jwks["keys"][0]  # never the private part


def test_dev_key_is_created_once_and_private(dev_settings: Settings) -> None:
    first = dev_issuer_for(dev_settings)
    second = dev_issuer_for(dev_settings)
    assert first.kid == second.kid
    mode = stat.S_IMODE(dev_settings.DEV_ISSUER_KEY_FILE.stat().st_mode)
    assert mode == 0o600


def test_dev_mode_refuses_production() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            ENVIRONMENT="production",
            DATABASE_URL="postgresql://u:p@db.example/app",
            CURSOR_SECRET="set",  # so the issuer is the one problem: a one-line message
            S3_BUCKET="tenant-docs-content",
            AWS_REGION="eu-west-1",
            KMS_PROVIDER="aws-kms",
        )
    message = str(caught.value)
    assert "\n" not in message
    assert "OIDC_ISSUER_URL: required when ENVIRONMENT=production" in message
    assert "dev token issuer is refused" in message


def test_production_requires_https_issuer() -> None:
    with pytest.raises(SettingsError, match="must be an https:// URL"):
        load_settings(
            ENVIRONMENT="production",
            DATABASE_URL="postgresql://u:p@db.example/app",
            OIDC_ISSUER_URL="http://idp.example.com",
            OIDC_CLIENT_ID="app",
        )


def test_issuer_without_audience_is_refused() -> None:
    with pytest.raises(SettingsError, match="OIDC_CLIENT_ID: required when OIDC_ISSUER_URL"):
        load_settings(OIDC_ISSUER_URL="https://idp.example.com")


async def test_production_rejects_dev_tokens_and_hides_dev_routes(
    settings: Settings,
    dev_settings: Settings,
    database: Database,
    make_caller: MakeCaller,
    issuer_server: IssuerServer,
) -> None:
    caller = await make_caller()
    dev_token = dev_issuer_for(dev_settings).mint(
        subject=str(caller.user.external_idp_id),
        tenant_id=caller.tenant.id,
        tenant_claim="tenant_id",
    )
    production = load_settings(
        ENVIRONMENT="production",
        DATABASE_URL=settings.DATABASE_URL.get_secret_value() if settings.DATABASE_URL else "",
        OIDC_ISSUER_URL=issuer_server.url,  # http on loopback is allowed even in production
        OIDC_CLIENT_ID=issuer_server.issuer.audience,
        DEV_ISSUER_KEY_FILE=dev_settings.DEV_ISSUER_KEY_FILE,
        CURSOR_SECRET="test-cursor-secret",
        S3_BUCKET="tenant-docs-content",
        AWS_REGION="eu-west-1",
        KMS_PROVIDER="aws-kms",
    )
    app = create_app(production, database)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        assert_unauthorized(await http.get("/api/v1/me", headers=bearer(dev_token)), "invalid")
        assert (await http.get("/api/v1/me", headers=caller.headers)).status_code == 200
        assert (await http.get("/api/v1/dev/jwks.json")).status_code == 404
    with pytest.raises(SettingsError, match="refused when ENVIRONMENT=production"):
        dev_issuer_for(production)


async def test_make_run_prints_a_curl_that_returns_the_demo_user(
    migrated_db: MigratedDatabase, tmp_path: Path, embedded_openbao: EmbeddedOpenBao
) -> None:
    async with dev_server(migrated_db, tmp_path, embedded_openbao) as server:
        curl = server.curl
        assert f"http://127.0.0.1:{server.port}/api/v1/me" in curl
        # Run the printed line exactly as a developer would paste it into a shell.
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c", curl, stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await asyncio.wait_for(shell.communicate(), timeout=30)
        assert shell.returncode == 0
        body = json.loads(stdout)
        assert body["user"]["email"] == DEMO_EMAIL
        assert body["user"]["role"] == "admin"
        assert body["tenant"]["status"] == "active"
        assert f"--tenant {body['tenant']['id']}" in "".join(server.printed)


def test_make_run_refuses_production_in_one_line(
    migrated_db: MigratedDatabase, tmp_path: Path
) -> None:
    env = cli_environment(
        migrated_db,
        tmp_path / "k.pem",
        ENVIRONMENT="production",
        # Content storage and keys configured, so the issuer is the one problem.
        S3_BUCKET="tenant-docs-content",
        AWS_REGION="eu-west-1",
        KMS_PROVIDER="aws-kms",
    )
    result = subprocess.run(
        [sys.executable, "-m", "app", "run"],
        cwd=BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "OIDC_ISSUER_URL: required when ENVIRONMENT=production" in lines[0]
    assert not (tmp_path / "k.pem").exists()
    assert os.environ.get("ENVIRONMENT") == "test"  # the parent was never switched
