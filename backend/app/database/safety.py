"""Fail-closed checks that the runtime role really is bound by Row-Level Security."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.database.roles import RUNTIME_ROLE

_ROLE_FACTS = text(
    "SELECT current_user AS role_name, rolsuper, rolbypassrls FROM pg_roles"
    " WHERE rolname = current_user"
)
# Every table holding tenant data: `tenants` itself and any table with a tenant_id column.
_UNPROTECTED_TABLES = text(
    """
    SELECT c.relname,
           c.relrowsecurity AS enabled,
           c.relforcerowsecurity AS forced,
           pg_has_role(current_user, c.relowner, 'MEMBER') AS owned
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema()
      AND c.relkind IN ('r', 'p')
      AND (c.relname = 'tenants' OR EXISTS (
            SELECT 1 FROM pg_attribute a
            WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))
      AND (NOT c.relrowsecurity OR NOT c.relforcerowsecurity
           OR pg_has_role(current_user, c.relowner, 'MEMBER'))
    ORDER BY c.relname
    """
)


async def runtime_role_problems(connection: AsyncConnection) -> list[str]:
    """What makes the connection's role unsafe for request handlers (empty when safe)."""
    problems: list[str] = []
    role = (await connection.execute(_ROLE_FACTS)).one()
    if role.role_name != RUNTIME_ROLE:
        problems.append(f"requests run as '{role.role_name}', not '{RUNTIME_ROLE}'")
    if role.rolsuper:
        problems.append(f"role '{role.role_name}' is a superuser (bypasses RLS)")
    if role.rolbypassrls:
        problems.append(f"role '{role.role_name}' has BYPASSRLS")
    for table in (await connection.execute(_UNPROTECTED_TABLES)).all():
        if table.owned:
            problems.append(f"role '{role.role_name}' owns table '{table.relname}'")
        if not table.enabled:
            problems.append(f"table '{table.relname}' does not have row level security enabled")
        elif not table.forced:
            problems.append(f"table '{table.relname}' does not FORCE row level security")
    return problems


_LOGIN_FACTS = text(
    """
    SELECT r.rolsuper OR r.rolbypassrls OR EXISTS (
        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relname = 'tenants'
          AND pg_has_role(session_user, c.relowner, 'MEMBER')) AS privileged
    FROM pg_roles r WHERE r.rolname = session_user
    """
)


async def login_is_privileged(connection: AsyncConnection) -> bool:
    """True when the session's login user could bypass RLS (superuser, BYPASSRLS or owner)."""
    return bool((await connection.execute(_LOGIN_FACTS)).scalar())
