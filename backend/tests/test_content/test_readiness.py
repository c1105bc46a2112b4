"""Readiness names object storage and the KMS when they are in use, and 503s when either is down."""

from __future__ import annotations

import httpx
import pytest

from app.content.backends import ContentBackends
from app.content.embedded_openbao import EmbeddedOpenBao
from app.content.embedded_process import free_ports
from app.content.key_manager import KeyManagerUnavailableError
from app.content.object_store import S3ObjectStore, StorageUnavailableError
from app.content.openbao_transit import OpenBaoTransitKeyManager
from app.core.config import Environment, Settings, load_settings
from app.database import Database
from app.main import create_app

DATABASE_CHECKS = {"database", "vector_extension", "schema", "runtime_role"}


async def ready(settings: Settings, database: Database, content: ContentBackends) -> httpx.Response:
    app = create_app(settings, database, content=content)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        return await client.get("/api/v1/health/ready")


async def test_unused_embedded_backends_are_not_checked(
    settings: Settings, database: Database
) -> None:
    response = await ready(settings, database, ContentBackends(settings))
    assert response.status_code == 200
    assert set(response.json()["checks"]) == DATABASE_CHECKS


async def test_backends_in_use_are_checked(
    settings: Settings,
    database: Database,
    object_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    content = ContentBackends(settings, store=object_store, keys=key_manager, owned=False)
    response = await ready(settings, database, content)
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert (checks["object_storage"], checks["kms"]) == ("ok", "ok")


async def test_storage_down_is_503_naming_it(
    settings: Settings,
    database: Database,
    unreachable_store: S3ObjectStore,
    key_manager: OpenBaoTransitKeyManager,
) -> None:
    content = ContentBackends(settings, store=unreachable_store, keys=key_manager, owned=False)
    response = await ready(settings, database, content)
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["object_storage"] in {"unavailable", "timed out"}
    assert checks["kms"] == "ok"
    assert checks["database"] == "ok"


async def test_kms_down_is_503_naming_it(
    settings: Settings,
    database: Database,
    object_store: S3ObjectStore,
    unreachable_keys: OpenBaoTransitKeyManager,
) -> None:
    content = ContentBackends(settings, store=object_store, keys=unreachable_keys, owned=False)
    response = await ready(settings, database, content)
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["kms"] == "unavailable"
    assert checks["object_storage"] == "ok"


async def test_a_configured_openbao_is_checked_before_first_use(
    settings: Settings, database: Database, embedded_openbao: EmbeddedOpenBao
) -> None:
    (port,) = free_ports(1)
    configured = load_settings(
        **{
            **settings.model_dump(),
            "OPENBAO_ADDR": f"http://127.0.0.1:{port}",
            "OPENBAO_TOKEN": embedded_openbao.token,
        }
    )
    response = await ready(configured, database, ContentBackends(configured))
    assert response.status_code == 503
    assert response.json()["checks"]["kms"] == "unavailable"
    assert "object_storage" not in response.json()["checks"]


async def test_production_never_starts_an_embedded_server(settings: Settings) -> None:
    production = Settings.model_construct(
        **{**settings.model_dump(), "ENVIRONMENT": Environment.PRODUCTION}
    )
    content = ContentBackends(production)
    with pytest.raises(StorageUnavailableError, match="S3_BUCKET: required"):
        await content.object_store()
    with pytest.raises(KeyManagerUnavailableError, match="KMS_PROVIDER=aws-kms or OPENBAO_ADDR"):
        await content.key_manager()
