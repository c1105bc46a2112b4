"""Per-tenant HNSW indexes: which tenants need one, and building and dropping them safely.

A tenant with more than VECTOR_INDEX_MIN_ROWS searchable documents (embedded, not deleted)
gets a partial HNSW index of its own, so its searches never walk a graph holding other
tenants' vectors (issue 16). `search_documents()` finds the index by its name and uses it only
once it is valid; until then, the tenant is scanned exactly and answers correctly.

Only the maintenance command runs this (`tenantdocs vector-indexes`), never a request:
- `CREATE INDEX CONCURRENTLY` builds without blocking the tenant's (or anyone's) writes; it
  cannot run inside a transaction, so the connection must be in autocommit.
- A build that fails or is killed half way leaves an INVALID index (pg_index.indisvalid =
  false): searches ignore it, but inserts still maintain it. Each run drops those and builds
  them again. https://www.postgresql.org/docs/current/sql-createindex.html#SQL-CREATEINDEX-CONCURRENTLY
- An index is dropped (DROP INDEX CONCURRENTLY) once its tenant falls below half the
  threshold, so a tenant hovering around it does not flap.
- Tenants are counted in an admin transaction (the provisioning role, BYPASSRLS: every tenant);
  the DDL runs as the login that owns the table, because PostgreSQL lets only a table's owner
  create an index on it (no grantable privilege does).
- A session advisory lock makes concurrent runs wait for each other instead of racing.
- Build settings (maintenance_work_mem, no statement timeout) are start-up parameters of the
  maintenance engine (app/cli/vector_indexes.py), never a SET on a connection.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from enum import StrEnum

from pgvector.sqlalchemy import Vector
from sqlalchemy import TextClause, TextualSelect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.database import vector_search
from app.database.engine import DatabaseTargets, build_engine, build_runtime_engine
from app.database.session import admin_transaction, make_sessionmaker, tenant_transaction

# The graph's parameters. On a tenant whose documents sit in a few tight clusters, m=16 /
# ef_construction=128 built graphs in which whole regions were unreachable (recall@10 0 for
# some queries whatever ef_search); m=32 / ef_construction=256 reached every neighbour
# (docs/VECTOR_SEARCH.md). Every build is checked anyway (RECALL_PROBES).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 256
# After a build, this many of the tenant's own documents (perturbed slightly) are searched
# through the new index and exactly; if any finds under MIN_PROBE_RECALL of its true top 10,
# the index is dropped and the tenant stays on the exact scan (slower, never wrong).
RECALL_PROBES = 20
MIN_PROBE_RECALL = 0.99
# Building a graph in memory is several times faster than spilling it; 512 MB holds a
# ~60k-document tenant's graph (1024 dims).
DEFAULT_MAINTENANCE_WORK_MEM = "512MB"
# Any fixed 64-bit key, the same for every run of the command.
_ADVISORY_LOCK_KEY = 0x7665_6374_6F72_6978  # "vectorix"


@dataclass(frozen=True)
class VectorTable:
    """A table whose tenants get HNSW indexes of their own, and how its searches find them."""

    table: str
    column: str
    index_prefix: str
    # The rows a search may return, besides the tenant (the partial index's predicate).
    searchable: str
    # The search function's rows (id first) for a probe, with the tenant's context set.
    search_sql: str


DOCUMENTS = VectorTable(
    table="documents",
    column="embedding_vector",
    index_prefix="idx_documents_hnsw_tenant_",
    searchable="embedding_vector IS NOT NULL AND deleted_at IS NULL",
    search_sql="SELECT id, strategy FROM search_documents(CAST(:query AS vector), :k, :status,"
    " :content_type, :metadata, :exact_min_rows, :hnsw_min_share, :ef_search, :max_scan_tuples)",
)
# Issue 19: a document's text in chunks, far more rows than documents; same rules.
CHUNKS = VectorTable(
    table="document_chunks",
    column="embedding",
    index_prefix="idx_chunks_hnsw_tenant_",
    searchable="deleted_at IS NULL",
    search_sql="SELECT id, strategy FROM search_document_chunks(CAST(:query AS vector), :k,"
    " :exact_min_rows, :hnsw_min_share, :ef_search, :max_scan_tuples)",
)
VECTOR_TABLES = (DOCUMENTS, CHUNKS)
INDEX_PREFIX = DOCUMENTS.index_prefix


def _searchable_counts(table: VectorTable) -> TextClause:
    return text(
        f"SELECT tenant_id, count(*) FROM {table.table} WHERE {table.searchable}"  # noqa: S608
        " GROUP BY tenant_id"
    )


def _tenant_indexes(table: VectorTable) -> TextClause:
    return text(
        "SELECT c.relname, i.indisvalid AND i.indisready AND i.indislive AS valid,"
        " pg_relation_size(c.oid) AS size"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = CAST(:table AS regclass) AND c.relname LIKE :pattern"
    ).bindparams(
        table=f"public.{table.table}", pattern=table.index_prefix.replace("_", r"\_") + "%"
    )


class Action(StrEnum):
    """What a run does with one tenant's index."""

    BUILD = "build"
    REBUILD_INVALID = "rebuild-invalid"
    DROP = "drop"
    DROP_INVALID = "drop-invalid"
    KEEP = "keep"
    FAILED_PROBE = "exact-only"


@dataclass(frozen=True)
class IndexPlan:
    """One tenant's index: its searchable rows, what exists, and what to do."""

    tenant_id: uuid.UUID
    searchable_rows: int
    index_name: str
    exists: bool
    valid: bool
    action: Action
    table: VectorTable = DOCUMENTS


@dataclass(frozen=True)
class IndexResult:
    """What a run did for one tenant, and what it cost (and, for a build, the probe's recall)."""

    plan: IndexPlan
    seconds: float
    index_bytes: int
    probe_recall: float | None = None


def index_name(tenant_id: uuid.UUID, table: VectorTable = DOCUMENTS) -> str:
    """The name of `tenant_id`'s own HNSW index on `table` (58 characters at most: under
    PostgreSQL's 63)."""
    return table.index_prefix + tenant_id.hex


def tenant_of_index(name: str, table: VectorTable = DOCUMENTS) -> uuid.UUID | None:
    """The tenant an index named by `index_name` belongs to, or None for any other name."""
    if not name.startswith(table.index_prefix):
        return None
    try:
        return uuid.UUID(hex=name.removeprefix(table.index_prefix))
    except ValueError:
        return None


def create_index_sql(tenant_id: uuid.UUID, table: VectorTable = DOCUMENTS) -> str:
    """CREATE INDEX CONCURRENTLY for the tenant's own HNSW index on `table`.

    The predicate must be exactly what the search function writes in its WHERE clause (a
    literal tenant id, then the searchable-row conditions), or the planner won't use it. The
    id is a uuid.UUID, so its text form is safe to inline.
    """
    return (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index_name(tenant_id, table)} ON {table.table}"
        f" USING hnsw ({table.column} vector_cosine_ops)"
        f" WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
        f" WHERE tenant_id = '{tenant_id}'::uuid AND {table.searchable}"
    )


def drop_index_sql(name: str) -> str:
    """DROP INDEX CONCURRENTLY for one of our per-tenant indexes (refuses any other name)."""
    if all(tenant_of_index(name, table) is None for table in VECTOR_TABLES):
        raise ValueError(f"{name!r} is not a per-tenant vector index")
    return f"DROP INDEX CONCURRENTLY IF EXISTS {name}"


def decide(
    counts: dict[uuid.UUID, int],
    indexes: dict[str, bool],
    min_rows: int,
    table: VectorTable = DOCUMENTS,
) -> list[IndexPlan]:
    """Plan every tenant that has searchable rows or an index; biggest tenants first."""
    tenants: dict[uuid.UUID, int] = dict(counts)
    for name in indexes:
        tenant = tenant_of_index(name, table)
        if tenant is not None:
            tenants.setdefault(tenant, 0)
    plans = []
    for tenant, rows in sorted(tenants.items(), key=lambda item: (-item[1], str(item[0]))):
        name = index_name(tenant, table)
        exists = name in indexes
        valid = indexes.get(name, False)
        wanted = rows > min_rows or (exists and valid and rows >= min_rows // 2)
        if wanted:
            action = Action.KEEP if valid else Action.REBUILD_INVALID if exists else Action.BUILD
        elif exists:
            action = Action.DROP if valid else Action.DROP_INVALID
        else:
            continue
        plans.append(IndexPlan(tenant, rows, name, exists, valid, action, table))
    return plans


async def plan_indexes(session: AsyncSession, min_rows: int) -> list[IndexPlan]:
    """What a run would do: count every tenant's searchable rows and read our indexes, for
    documents, then chunks.

    `session` is in an admin transaction (the provisioning role sees every tenant's rows).
    """
    plans = []
    for table in VECTOR_TABLES:
        counts = {row[0]: int(row[1]) for row in await session.execute(_searchable_counts(table))}
        indexes = {row[0]: bool(row[1]) for row in await session.execute(_tenant_indexes(table))}
        plans += decide(counts, indexes, min_rows, table)
    return plans


async def index_size(connection: AsyncConnection, name: str) -> int:
    """The on-disk size of an index in bytes (0 if it does not exist)."""
    size = await connection.execute(
        text("SELECT pg_relation_size(to_regclass(:name))"), {"name": f"public.{name}"}
    )
    return int(size.scalar() or 0)


def _probe_queries(table: VectorTable) -> TextualSelect:
    return text(
        f"SELECT {table.column} FROM {table.table} WHERE tenant_id = :tenant"  # noqa: S608
        f" AND {table.searchable} ORDER BY random() LIMIT :probes"
    ).columns(**{table.column: Vector(vector_search.EMBEDDING_DIMENSIONS)})


def _probe_exact(table: VectorTable) -> TextClause:
    return text(
        f"SELECT id FROM (SELECT id, {table.column} <=> CAST(:query AS vector) AS distance"  # noqa: S608
        f" FROM {table.table} WHERE tenant_id = :tenant AND {table.searchable} OFFSET 0)"
        " AS scored ORDER BY distance, id LIMIT 10"
    )


async def probe_recall(
    session: AsyncSession, tenant_id: uuid.UUID, table: VectorTable = DOCUMENTS
) -> float:
    """The lowest recall@10 of RECALL_PROBES searches near the tenant's own rows of `table`.

    `session` is a tenant transaction as app_runtime, like a request's. Each probe is one of
    the tenant's vectors, slightly perturbed, so a region of the graph the walk cannot reach
    shows up. The search is the table's search function itself; a probe that did not walk the
    index at all counts as a miss.
    """
    vectors = (
        await session.execute(_probe_queries(table), {"tenant": tenant_id, "probes": RECALL_PROBES})
    ).scalars()
    noise = random.Random(tenant_id.int)  # noqa: S311  (perturbation, not a secret)
    lowest = 1.0
    for vector in vectors:
        query = [float(x) + noise.gauss(0, 1e-3) for x in vector]
        # No exact-scan floor: the probe tests the graph, whatever the tenant's size.
        parameters = {**vector_search.search_parameters(query, 10, None), "exact_min_rows": 0}
        truth = set(
            (
                await session.execute(_probe_exact(table), {"tenant": tenant_id, **parameters})
            ).scalars()
        )
        rows = (await session.execute(text(table.search_sql), parameters)).all()
        walked = {row[1] for row in rows} == {"hnsw"}
        recall = len(truth & {row[0] for row in rows}) / len(truth) if truth else 1.0
        lowest = min(lowest, recall if walked else 0.0)
    return lowest


async def apply_plan(
    connection: AsyncConnection,
    plans: list[IndexPlan],
    on_done: Callable[[IndexResult], None] | None = None,
    *,
    probe_sessions: async_sessionmaker[AsyncSession] | None = None,
    min_recall: float = MIN_PROBE_RECALL,
) -> list[IndexResult]:
    """Carry out `plans` on an AUTOCOMMIT connection of the table's owner, one index at a time.

    With `probe_sessions` (app_runtime's, as requests use), every new index is probed
    (probe_recall) and dropped again if it misses: that tenant keeps the exact scan.
    """
    results = []
    for plan in plans:
        started = time.perf_counter()
        recall = None
        if plan.action in (Action.DROP, Action.DROP_INVALID, Action.REBUILD_INVALID):
            await connection.exec_driver_sql(drop_index_sql(plan.index_name))
        if plan.action in (Action.BUILD, Action.REBUILD_INVALID):
            await connection.exec_driver_sql(create_index_sql(plan.tenant_id, plan.table))
            if probe_sessions is not None:
                async with tenant_transaction(probe_sessions, plan.tenant_id) as session:
                    recall = await probe_recall(session, plan.tenant_id, plan.table)
        size = await index_size(connection, plan.index_name)
        if recall is not None and recall < min_recall:
            await connection.exec_driver_sql(drop_index_sql(plan.index_name))
            plan = replace(plan, action=Action.FAILED_PROBE)
        result = IndexResult(plan, time.perf_counter() - started, size, recall)
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results


async def maintain_indexes(
    engine: AsyncEngine,
    min_rows: int,
    *,
    dry_run: bool = False,
    on_done: Callable[[IndexResult], None] | None = None,
    probe_sessions: async_sessionmaker[AsyncSession] | None = None,
    min_recall: float = MIN_PROBE_RECALL,
    tenants: Collection[uuid.UUID] | None = None,
) -> list[IndexResult]:
    """Bring every tenant's own index in line with `min_rows`, under an advisory lock.

    `engine` logs in as the table's owner (DATABASE_URL's login) and has room for two
    connections: one in AUTOCOMMIT for the lock and CREATE INDEX CONCURRENTLY, one for the
    admin transaction that plans. `probe_sessions` (app_runtime) probe each new index.
    `tenants`, if given, limits the run to those tenants (the others are left as they are).
    """
    async with engine.connect() as connection:
        ddl = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await ddl.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        try:
            async with admin_transaction(make_sessionmaker(engine)) as session:
                plans = await plan_indexes(session, min_rows)
            if tenants is not None:
                plans = [plan for plan in plans if plan.tenant_id in tenants]
            if dry_run:
                return [IndexResult(plan, 0.0, 0) for plan in plans]
            return await apply_plan(
                ddl, plans, on_done, probe_sessions=probe_sessions, min_recall=min_recall
            )
        finally:
            await ddl.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY})


def build_maintenance_engine(
    targets: DatabaseTargets, settings: Settings, maintenance_work_mem: str
) -> AsyncEngine:
    """The table owner's engine for index builds: two connections, no statement timeout."""
    return build_engine(
        targets.login_url,
        settings,
        application_name="tenant-docs-vector-indexes",
        pool_size=2,
        max_overflow=0,
        # An index build takes minutes: not bounded by the API's statement timeout.
        server_settings={"statement_timeout": "0", "maintenance_work_mem": maintenance_work_mem},
    )


async def run_maintenance(
    targets: DatabaseTargets,
    settings: Settings,
    min_rows: int,
    *,
    dry_run: bool = False,
    maintenance_work_mem: str = DEFAULT_MAINTENANCE_WORK_MEM,
    tenants: Collection[uuid.UUID] | None = None,
    on_done: Callable[[IndexResult], None] | None = None,
) -> list[IndexResult]:
    """What `tenantdocs vector-indexes` does: maintain_indexes as the owner, probing as app_runtime.

    The one entry point for the command, its scheduled runs and the benchmark, so each builds
    and probes the indexes the same way.
    """
    engine = build_maintenance_engine(targets, settings, maintenance_work_mem)
    # Each new index is probed the way requests search: as app_runtime, in a tenant transaction.
    runtime = build_runtime_engine(
        targets,
        settings,
        pool_size=1,
        max_overflow=0,
        server_settings={"statement_timeout": "0"},  # the probe's exact scans of a big tenant
    )
    try:
        return await maintain_indexes(
            engine,
            min_rows,
            dry_run=dry_run,
            on_done=on_done,
            probe_sessions=make_sessionmaker(runtime),
            tenants=tenants,
        )
    finally:
        await runtime.dispose()
        await engine.dispose()
