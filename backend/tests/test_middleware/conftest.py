"""Fixtures for the edge tests: how much database work the app did while a test ran."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass
class DatabaseUse:
    """Connections checked out, transactions begun and statements sent on the runtime engine."""

    checkouts: int = 0
    transactions: int = 0
    statements: int = 0

    def snapshot(self) -> tuple[int, int, int]:
        """The three counts now, to compare before and after a request."""
        return (self.checkouts, self.transactions, self.statements)


@pytest.fixture
def database_use(runtime_engine: AsyncEngine) -> Iterator[DatabaseUse]:
    """Counts what the app (served on the session's runtime engine) asks of the database."""
    use = DatabaseUse()

    def checkout(*_args: Any) -> None:
        use.checkouts += 1

    def begin(*_args: Any) -> None:
        use.transactions += 1

    def statement(*_args: Any) -> None:
        use.statements += 1

    engine = runtime_engine.sync_engine
    listeners = [
        (engine.pool, "checkout", checkout),
        (engine, "begin", begin),
        (engine, "before_cursor_execute", statement),
    ]
    for target, name, listener in listeners:
        event.listen(target, name, listener)
    yield use
    for target, name, listener in listeners:
        event.remove(target, name, listener)


def assert_error(response: httpx.Response, status_code: int, code: str) -> dict[str, Any]:
    """The response is the standard JSON error with this status and code; returns its body."""
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error
