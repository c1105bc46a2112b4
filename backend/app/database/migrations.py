"""Run Alembic programmatically (make run, make migrate, the tests) and read the schema head."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import URL

from alembic import command
from app.core.config import BACKEND_DIR

ALEMBIC_INI = BACKEND_DIR / "alembic.ini"


def alembic_config() -> Config:
    """Alembic's Config for this project, with logging left to the caller."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(Path(BACKEND_DIR) / "alembic"))
    config.attributes["skip_logging_config"] = True
    return config


@cache
def head_revision() -> str:
    """The newest migration's revision id."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


def _with_connection(
    login_url: URL, runtime_password: str | None, action: str, revision: str
) -> None:
    config = alembic_config()
    engine = create_engine(login_url)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            config.attributes["runtime_password"] = runtime_password
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
            connection.commit()
    finally:
        engine.dispose()


def upgrade(login_url: URL, runtime_password: str | None, revision: str = "head") -> None:
    """Migrate the database at `login_url` up to `revision` as that login."""
    _with_connection(login_url, runtime_password, "upgrade", revision)


def downgrade(login_url: URL, revision: str = "base") -> None:
    """Migrate the database at `login_url` down to `revision`."""
    _with_connection(login_url, None, "downgrade", revision)


def current_revision(login_url: URL) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    engine = create_engine(login_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
