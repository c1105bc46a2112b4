"""The role request code runs as really is bound by RLS, can create nothing, and fails closed."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings, load_settings
from app.database import Database, migrations
from app.database.engine import build_engine, build_runtime_engine, targets_for
from app.database.session import make_sessionmaker, tenant_transaction
from app.main import UnsafeRuntimeRoleError, create_app, open_database
from app.models import Document
from testkit import database_harness as harness
from testkit.database_harness import sqlstate
from testkit.factories import provision_tenant
from tests.conftest import MigratedDatabase

TENANT_TABLES = (
    "tenants",
    "users",
    "documents",
    "audit_logs",
    "idempotency_keys",
    "audit_chain_heads",
)
INSUFFICIENT_PRIVILEGE = "42501"


async def test_request_session_runs_as_app_runtime_bound_by_forced_rls(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        role = (
            await session.execute(
                text(
                    "SELECT current_user AS name, r.rolsuper, r.rolbypassrls FROM pg_roles r"
                    " WHERE r.rolname = current_user"
                )
            )
        ).one()
        forced = dict(
            (
                await session.execute(
                    text(
                        "SELECT relname, relrowsecurity AND relforcerowsecurity FROM pg_class"
                        " WHERE relname = ANY(:tables) AND relkind = 'r'"
                    ),
                    {"tables": list(TENANT_TABLES)},
                )
            ).all()
        )
    assert (role.name, role.rolsuper, role.rolbypassrls) == ("app_runtime", False, False)
    assert forced == dict.fromkeys(TENANT_TABLES, True)


async def test_runtime_role_holds_no_dangerous_privilege(migrated_db: MigratedDatabase) -> None:
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        table_privileges = conn.execute(
            """
            SELECT c.relname, p.privilege
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace,
                 unnest(ARRAY['DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(privilege)
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
              AND (has_table_privilege('app_runtime', c.oid, p.privilege)
                   OR (p.privilege = 'REFERENCES'
                       AND has_any_column_privilege('app_runtime', c.oid, 'REFERENCES')))
            """
        ).fetchall()
        schemas_with_create = conn.execute(
            "SELECT nspname FROM pg_namespace"
            " WHERE has_schema_privilege('app_runtime', oid, 'CREATE')"
        ).fetchall()
        database = conn.execute(
            "SELECT has_database_privilege('app_runtime', current_database(), 'TEMP'),"
            " has_database_privilege('app_runtime', current_database(), 'CREATE')"
        ).fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
        ).fetchone()
    assert tables is not None
    assert tables[0] >= 5  # the check really looked at the tables
    assert table_privileges == []
    assert schemas_with_create == []
    assert database == (False, False)


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("CREATE TEMP TABLE scratch (i int)", "permission denied to create temporary tables"),
        ("CREATE TABLE public.scratch (i int)", "permission denied for schema public"),
        (
            "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "permission denied for schema public",
        ),
        ("SET session_replication_role = replica", "permission denied to set parameter"),
        ("ALTER TABLE audit_logs DISABLE TRIGGER prevent_audit_log_delete", "must be owner"),
        ("ALTER TABLE documents DISABLE ROW LEVEL SECURITY", "must be owner"),
        ("CREATE SCHEMA scratch", "permission denied for database"),
        ("SET ROLE app_admin", "permission denied to set role"),
    ],
)
async def test_runtime_role_can_create_and_disable_nothing(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    statement: str,
    message: str,
) -> None:
    tenant = await provision_tenant(admin_sessions, users=0)
    with pytest.raises(DBAPIError) as refused:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            await session.execute(text(statement))
    assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE
    assert message in str(refused.value.orig)


def test_policy_and_trigger_functions_pin_search_path(migrated_db: MigratedDatabase) -> None:
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        functions = conn.execute(
            """
            SELECT p.oid::regprocedure::text, n.nspname, p.proconfig
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.oid IN (
                SELECT t.tgfoid FROM pg_trigger t WHERE NOT t.tgisinternal
                UNION
                SELECT d.refobjid FROM pg_depend d
                WHERE d.classid = 'pg_policy'::regclass AND d.refclassid = 'pg_proc'::regclass
            )
            """
        ).fetchall()
    names = {name for name, _, _ in functions}
    assert {
        "set_updated_at()",
        "prevent_audit_log_modification()",
        "guard_audit_log_tenant()",
        "chain_audit_log()",
        "notify_caller_change()",
    } <= names
    for name, schema, config in functions:
        # Built-ins live in pg_catalog, which is always searched first; anything else must pin.
        if schema != "pg_catalog":
            assert any(item.startswith("search_path=") for item in config or []), name


def test_no_security_definer_function_is_executable_by_public(
    migrated_db: MigratedDatabase,
) -> None:
    with psycopg.connect(harness.libpq(migrated_db.superuser_url)) as conn:
        exposed = conn.execute(
            """
            SELECT p.oid::regprocedure::text
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.prosecdef
              AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND EXISTS (
                  SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                  WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
            """
        ).fetchall()
        app_functions_for_public = conn.execute(
            "SELECT p.proname FROM pg_proc p"
            " WHERE p.proname IN ('set_updated_at', 'prevent_audit_log_modification',"
            "   'guard_audit_log_tenant', 'chain_audit_log', 'audit_netstring',"
            "   'audit_log_row_hash', 'notify_caller_change', 'caller_changes_sync')"
            "   AND has_function_privilege('public', p.oid, 'EXECUTE')"
        ).fetchall()
    assert exposed == []
    assert app_functions_for_public == []


async def test_strong_mode_reset_role_stays_app_runtime(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions, documents=1)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        await session.execute(text("RESET ROLE"))
        who = (await session.execute(text("SELECT current_user, session_user"))).one()
        ids = (await session.scalars(select(Document.id))).all()
    assert tuple(who) == ("app_runtime", "app_runtime")
    assert ids == tenant.document_ids  # still scoped by RLS
    with pytest.raises(DBAPIError) as refused:
        async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
            await session.execute(text("SET SESSION AUTHORIZATION app_migrator"))
    assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE


async def test_fallback_mode_switches_to_app_runtime_and_rls_applies(
    settings: Settings,
    migrated_db: MigratedDatabase,
    admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions, documents=2)
    targets = targets_for(migrated_db.owner_url, None)  # no runtime password: SET ROLE mode
    assert not targets.runtime_logs_in
    engine = build_runtime_engine(targets, settings, pool_size=1, max_overflow=0)
    sessions = make_sessionmaker(engine)
    try:
        async with tenant_transaction(sessions, tenant.tenant_id) as session:
            who = (await session.execute(text("SELECT current_user, session_user"))).one()
            ids = set((await session.scalars(select(Document.id))).all())
        async with sessions() as session, session.begin():
            without_context = (await session.scalars(select(Document.id))).all()
    finally:
        await engine.dispose()
    assert tuple(who) == ("app_runtime", harness.MIGRATOR_ROLE)
    assert ids == set(tenant.document_ids)
    assert without_context == []


def _settings_for(url: URL, runtime_password: str | None) -> Settings:
    return load_settings(
        ENVIRONMENT="test",
        DATABASE_URL=url.render_as_string(hide_password=False),
        APP_RUNTIME_PASSWORD=runtime_password,
        DB_POOL_SIZE=1,
        DB_MAX_OVERFLOW=0,
    )


@pytest.mark.parametrize("login", ["superuser", "table owner"])
async def test_fallback_mode_with_privileged_login_warns_at_start_up(
    migrated_db: MigratedDatabase, caplog: pytest.LogCaptureFixture, login: str
) -> None:
    url = migrated_db.superuser_url if login == "superuser" else migrated_db.owner_url
    with caplog.at_level(logging.WARNING, logger="app.main"):
        database = await open_database(_settings_for(url, None))
        await database.dispose()
    warnings = [r for r in caplog.records if r.name == "app.main" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "APP_RUNTIME_PASSWORD is not set" in message
    assert "RESET ROLE" in message
    assert "bypass RLS" in message


async def test_strong_mode_starts_without_warning(
    migrated_db: MigratedDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.main"):
        database = await open_database(
            _settings_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
        )
        await database.dispose()
    assert database.targets.runtime_logs_in
    assert [r for r in caplog.records if r.name == "app.main"] == []


@pytest.fixture(scope="module")
def throwaway_db(test_server: harness.TestServer) -> Iterator[URL]:
    """A database of its own, migrated to head by the superuser, to be made unsafe on purpose."""
    name = harness.create_database(test_server)
    url = test_server.url(name)
    migrations.upgrade(url, harness.RUNTIME_PASSWORD)
    yield url
    harness.drop_database(test_server, name)


def _superuser_execute(url: URL, statement: str) -> None:
    with psycopg.connect(harness.libpq(url), autocommit=True) as conn:
        conn.execute(statement)


async def _ready(settings: Settings, database: Database) -> httpx.Response:
    app = create_app(settings, database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get("/api/v1/health/ready")


@pytest.mark.parametrize(
    ("break_it", "repair", "problem"),
    [
        (
            "ALTER TABLE documents NO FORCE ROW LEVEL SECURITY",
            "ALTER TABLE documents FORCE ROW LEVEL SECURITY",
            "table 'documents' does not FORCE row level security",
        ),
        (
            "ALTER TABLE users DISABLE ROW LEVEL SECURITY",
            "ALTER TABLE users ENABLE ROW LEVEL SECURITY",
            "table 'users' does not have row level security enabled",
        ),
        (
            "ALTER TABLE audit_logs OWNER TO app_runtime",
            "ALTER TABLE audit_logs OWNER TO CURRENT_USER",
            "role 'app_runtime' owns table 'audit_logs'",
        ),
    ],
    ids=["no-force", "rls-disabled", "runtime-owns-table"],
)
async def test_unsafe_runtime_role_refuses_to_start_and_is_not_ready(
    throwaway_db: URL, break_it: str, repair: str, problem: str
) -> None:
    settings = _settings_for(throwaway_db, harness.RUNTIME_PASSWORD)
    _superuser_execute(throwaway_db, break_it)
    try:
        with pytest.raises(UnsafeRuntimeRoleError) as refused:
            await open_database(settings)
        targets = targets_for(throwaway_db, harness.RUNTIME_PASSWORD)
        engine = build_runtime_engine(targets, settings)
        try:
            response = await _ready(settings, Database(targets, engine, make_sessionmaker(engine)))
        finally:
            await engine.dispose()
    finally:
        _superuser_execute(throwaway_db, repair)
    message = str(refused.value)
    assert message.startswith("refusing to start: ")
    assert "\n" not in message
    assert problem in message
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["runtime_role"].startswith("unsafe: ")
    assert problem in checks["runtime_role"]
    assert {k: v for k, v in checks.items() if k != "runtime_role"} == {
        "database": "ok",
        "vector_extension": "ok",
        "schema": "ok",
    }


async def test_superuser_in_place_of_app_runtime_is_not_ready(throwaway_db: URL) -> None:
    settings = _settings_for(throwaway_db, None)
    engine = build_engine(throwaway_db, settings, pool_size=1, max_overflow=0)  # no role switch
    try:
        response = await _ready(
            settings, Database(targets_for(throwaway_db, None), engine, make_sessionmaker(engine))
        )
    finally:
        await engine.dispose()
    assert response.status_code == 503
    problem = response.json()["checks"]["runtime_role"]
    assert f"requests run as '{throwaway_db.username}', not 'app_runtime'" in problem
    assert "is a superuser (bypasses RLS)" in problem
    # The same database with the role switch in place is safe again.
    database = await open_database(settings)
    try:
        assert (await _ready(settings, database)).status_code == 200
    finally:
        await database.dispose()
