"""One line and a documented exit status when a command cannot reach the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import typer
from sqlalchemy.exc import DBAPIError

from app.core.config import Settings
from app.database.unavailable import EXIT_DATABASE_UNAVAILABLE, describe_unavailable


def exit_if_unavailable(settings: Settings, error: BaseException) -> None:
    """If `error` is a failure to connect, print `error: cannot reach …` and exit 3."""
    message = describe_unavailable(settings.database_url, error)
    if message is not None:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(EXIT_DATABASE_UNAVAILABLE)


@contextmanager
def database_unavailable_exits(settings: Settings) -> Iterator[None]:
    """Turn a connection failure inside the block into one line and exit status 3."""
    try:
        yield
    except (DBAPIError, psycopg.OperationalError) as exc:
        exit_if_unavailable(settings, exc)
        raise
