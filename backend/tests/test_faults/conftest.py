"""Fixtures for fault tests: an app on a tiny pool of its own, and a superuser to kill backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.database import Database
from app.database.engine import build_runtime_engine, targets_for
from app.database.session import make_sessionmaker
from app.main import create_app
from testkit import database_harness as harness
from tests.conftest import MigratedDatabase

OneConnectionApp = Callable[..., Any]


@pytest.fixture
def superuser(migrated_db: MigratedDatabase) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser connection to the test database (to inspect and to kill)."""
    with psycopg.connect(harness.libpq(migrated_db.superuser_url), autocommit=True) as conn:
        yield conn


@pytest.fixture
def one_connection_app(settings: Settings, migrated_db: MigratedDatabase) -> Callable[..., Any]:
    """`async with one_connection_app(**settings) as (client, engine)`: the app on a pool of one.

    Every request reuses the same pooled connection (until it dies), so a test can show what a
    failed request leaves behind for the next one.
    """

    @asynccontextmanager
    async def serve(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncEngine]]:
        app_settings = settings.model_copy(update=overrides)
        targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
        engine = build_runtime_engine(targets, app_settings, pool_size=1, max_overflow=0)
        database = Database(targets=targets, engine=engine, sessions=make_sessionmaker(engine))
        app: FastAPI = create_app(app_settings, database)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield c, engine
        finally:
            await engine.dispose()

    return serve
