"""Readiness checks: the database answers, pgvector is installed, the schema is at head."""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.database import Database
from app.database.migrations import head_revision
from app.database.safety import runtime_role_problems
from app.database.unavailable import describe_unavailable

logger = logging.getLogger(__name__)

_FACTS = text(
    "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS vector,"
    " (SELECT version_num FROM alembic_version LIMIT 1) AS revision"
)
_FACTS_WITHOUT_SCHEMA = text(
    "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS vector,"
    " NULL AS revision"
)
_HAS_VERSION_TABLE = text("SELECT to_regclass('alembic_version') IS NOT NULL")


async def readiness(database: Database) -> dict[str, str]:
    """Each check's result: "ok" or a short reason."""
    checks = {"database": "ok", "vector_extension": "ok", "schema": "ok", "runtime_role": "ok"}
    try:
        async with database.engine.connect() as connection:
            has_schema = (await connection.execute(_HAS_VERSION_TABLE)).scalar()
            facts = (
                await connection.execute(_FACTS if has_schema else _FACTS_WITHOUT_SCHEMA)
            ).one()
            problems = await runtime_role_problems(connection)
            await connection.rollback()
    except (SQLAlchemyError, OSError) as exc:
        # The cause (host:port and why) is for the operator's log, never the probe's response.
        logger.warning(
            "readiness: database unreachable",
            extra={
                "error": type(exc).__name__,
                "cause": describe_unavailable(database.targets.runtime_url, exc)
                or (str(exc).splitlines() or [type(exc).__name__])[0],
            },
        )
        return {
            **checks,
            "database": "unreachable",
            "vector_extension": "unknown",
            "schema": "unknown",
            "runtime_role": "unknown",
        }
    if facts.vector is None:
        checks["vector_extension"] = "missing: the 'vector' extension is not installed"
    expected = head_revision()
    if facts.revision != expected:
        checks["schema"] = f"behind: at {facts.revision or 'nothing'}, head is {expected}"
    if problems:
        checks["runtime_role"] = "unsafe: " + "; ".join(problems)
    return checks
