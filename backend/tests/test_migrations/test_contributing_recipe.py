"""CONTRIBUTING.md stays true: the files its recipe names exist, and its migration template
applies, isolates tenants as app_runtime, and rolls back, on the real schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError

from app.database import citus
from tests.conftest import MigratedDatabase

BACKEND = Path(__file__).resolve().parents[2]
CONTRIBUTING = BACKEND.parent / "CONTRIBUTING.md"
MARKER = "<!-- contributing-recipe-migration -->"
END_MARKER = "<!-- /contributing-recipe-migration -->"


def _guide() -> str:
    return CONTRIBUTING.read_text()


def _template() -> ModuleType:
    block = _guide().split(MARKER)[1].split(END_MARKER)[0]
    source = block.split("```python\n", 1)[1].rsplit("```", 1)[0]
    module = ModuleType("contributing_recipe_migration")
    exec(compile(source, str(CONTRIBUTING), "exec"), module.__dict__)  # noqa: S102 (our own doc)
    return module


def test_the_files_the_recipe_names_exist() -> None:
    named = set(re.findall(r"`(backend/[^`<>*]+?)`", _guide()))
    assert len(named) >= 8
    assert sorted(path for path in named if not (BACKEND.parent / path).exists()) == []


def test_the_template_names_an_existing_revision_and_is_one_file() -> None:
    module = _template()
    scripts = ScriptDirectory.from_config(Config(str(BACKEND / "alembic.ini")))
    known = {script.revision for script in scripts.walk_revisions()}
    assert module.down_revision in known
    assert re.fullmatch(r"[0-9a-f]{12}", module.revision)
    assert module.revision not in known


@pytest.fixture
def superuser(migrated_db: MigratedDatabase) -> Iterator[Connection]:
    """A superuser connection to the session database; everything is rolled back at the end."""
    engine = create_engine(migrated_db.superuser_url)
    try:
        with engine.connect() as connection:
            connection.begin()
            yield connection
            connection.rollback()
    finally:
        engine.dispose()


def _run(connection: Connection, step: Any) -> None:
    with Operations.context(MigrationContext.configure(connection)):
        step()


def _sqlstate(connection: Connection, statement: str, **values: Any) -> str | None:
    savepoint = connection.begin_nested()
    try:
        connection.execute(text(statement), values)
    except DBAPIError as exc:
        savepoint.rollback()
        return getattr(exc.orig, "sqlstate", "?")
    savepoint.commit()
    return None


def test_the_template_applies_isolates_and_rolls_back(superuser: Connection) -> None:
    module = _template()
    _run(superuser, module.upgrade)
    security = superuser.execute(
        text("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'notes'")
    ).one()
    assert tuple(security) == (True, True)
    policies = superuser.execute(
        text("SELECT roles, qual, with_check FROM pg_policies WHERE tablename = 'notes'")
    ).all()
    assert [(list(p.roles), p.qual is not None, p.with_check is not None) for p in policies] == [
        (["app_runtime"], True, True)
    ]
    # Keys Citus accepts (docs/SCALING.md): the template's table breaks none of its rules.
    assert citus.rule_violations(superuser) == []

    tenant_a, tenant_b = (
        superuser.execute(
            text("INSERT INTO tenants (name) VALUES (:n) RETURNING id"), {"n": n}
        ).scalar_one()
        for n in ("recipe A", "recipe B")
    )
    user_a, user_b = (
        superuser.execute(
            text("INSERT INTO users (tenant_id, email) VALUES (:t, :e) RETURNING id"),
            {"t": tenant, "e": email},
        ).scalar_one()
        for tenant, email in ((tenant_a, "a@recipe.example"), (tenant_b, "b@recipe.example"))
    )
    superuser.execute(text("SET LOCAL ROLE app_runtime"))
    superuser.execute(
        text("SELECT set_config('app.current_tenant_id', :t, true)"), {"t": str(tenant_a)}
    )
    insert = "INSERT INTO notes (tenant_id, user_id, body) VALUES (:t, :u, 'x')"
    assert _sqlstate(superuser, insert, t=tenant_a, u=user_a) is None
    # Another tenant's user as author: the composite foreign key refuses it.
    assert _sqlstate(superuser, insert, t=tenant_a, u=user_b) == "23503"
    # A row for another tenant: the policy's WITH CHECK refuses it.
    assert _sqlstate(superuser, insert, t=tenant_b, u=user_b) == "42501"
    # Column grants: no changing the key, no hard delete.
    assert _sqlstate(superuser, "UPDATE notes SET id = gen_random_uuid()") == "42501"
    assert _sqlstate(superuser, "DELETE FROM notes") == "42501"
    assert superuser.execute(text("SELECT count(*) FROM notes")).scalar_one() == 1
    superuser.execute(
        text("SELECT set_config('app.current_tenant_id', :t, true)"), {"t": str(tenant_b)}
    )
    assert superuser.execute(text("SELECT count(*) FROM notes")).scalar_one() == 0
    superuser.execute(text("RESET ROLE"))

    _run(superuser, module.downgrade)
    assert superuser.execute(text("SELECT to_regclass('notes')")).scalar_one() is None
