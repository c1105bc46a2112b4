"""Fixtures for auth tests: count database transactions, and compare error bodies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class TransactionCounter:
    """Counts transactions begun on the runtime engine while a test runs."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *_args: Any) -> None:
        self.count += 1


@pytest.fixture
def runtime_transactions(runtime_engine: AsyncEngine) -> Iterator[TransactionCounter]:
    """How many transactions the app opened (as app_runtime) during the test."""
    counter = TransactionCounter()
    event.listen(runtime_engine.sync_engine, "begin", counter)
    yield counter
    event.remove(runtime_engine.sync_engine, "begin", counter)


def error_without_request_id(response: httpx.Response) -> dict[str, Any]:
    """The error body minus the per-request id, to compare two responses."""
    error = dict(response.json()["error"])
    error.pop("request_id", None)
    return error


def assert_unauthorized(response: httpx.Response, reason: str) -> None:
    """401 with a Bearer challenge and the reason class in the JSON body."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()["error"]
    assert body["code"] == "unauthorized"
    assert body["reason"] == reason, body
