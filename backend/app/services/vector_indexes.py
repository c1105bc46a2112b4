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

import re
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
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
# (docs/VECTOR_SEARCH.md). Every build is probed anyway (PROBE_QUERIES).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 256
# After a build, the tenant's graph is probed with PROBE_QUERIES searches drawn like real ones:
# a quarter near one of its rows (perturbed, or halfway to a neighbour), three quarters new
# points of its own distribution (drawn from the spread of a row's neighbourhood, off every
# stored row), at each ef_search of EF_SEARCH_LADDER in turn. The smallest at which every probe
# finds at least MIN_PROBE_RECALL of its true top 10 (the minimum over queries, not the mean),
# then one rung of headroom verified the same way, is recorded as the index's comment, and the
# search walks with it; until then the index is not used. If no rung passes (with its
# headroom), the index is dropped and the tenant stays on the exact scan (slower, never wrong).
# Issue 16: a 16,861-row dense tenant passed the old 20-query probe (perturbed rows only) at
# ef_search 100 and still missed one of ten on some real queries; a probe without headroom
# chose ef_search 80 for it, where 1 in ~20 real queries still missed one.
PROBE_QUERIES = 100
EF_SEARCH_LADDER = (40, 60, 80, 120, 160, 240, 320, 480, 640)
MIN_PROBE_RECALL = 0.99
# Recorded with the ef_search: an index probed by an older version of the probe is probed again.
PROBE_VERSION = 3
# The probe is redone when the tenant has grown to this many times the rows it was probed at.
RECALIBRATE_GROWTH = 2.0
# Rows drawn to make the queries from, and the neighbourhood a new point is drawn from: enough
# that a row's nearest in the sample are its own cluster's.
_PROBE_SAMPLE_ROWS = 2000
_NEIGHBOURS = 16
# Graphs built per index before its tenant is left on the exact scan: a probe that misses at
# every ef_search usually means a node the build left unreachable (1 build in 145 of a
# 600-row tenant in 4 tight clusters, measured), which a second, independent build rarely repeats.
BUILD_ATTEMPTS = 2
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
    " :status, :content_type, :metadata, :exact_min_rows, :hnsw_min_share, :ef_search,"
    " :max_scan_tuples)",
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
        " obj_description(c.oid, 'pg_class') AS probed"
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
    # A valid index never probed (built before probes recorded their ef_search) or probed at
    # under half its tenant's rows today: probed again, kept with the ef_search found, or dropped.
    CALIBRATE = "calibrate"
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
    """What a run did for one tenant, and what it cost (and, for a probe, what it found)."""

    plan: IndexPlan
    seconds: float
    index_bytes: int
    probe_recall: float | None = None
    ef_search: int | None = None


@dataclass(frozen=True)
class ProbeResult:
    """A graph's probe: the ef_search to walk it with (the rung of the ladder above the smallest
    that found the true top 10 of every query, if that one did too; None if none did), and the
    lowest recall@10 over the queries at the last rung tried."""

    ef_search: int | None
    min_recall: float
    queries: int


# What probe_comment writes (the search functions read only its leading `ef_search=<n>`).
_PROBED = re.compile(
    r"ef_search=(\d+) min_recall@10=[\d.]+ probe_queries=\d+ probe=(\d+) rows=(\d+)"
)


def probed_rows(comment: str | None) -> int | None:
    """The tenant's rows when the current probe (PROBE_VERSION) passed its index, from the
    comment it recorded; None if never probed, or probed by an older probe."""
    found = _PROBED.fullmatch(comment or "")
    if found is None or int(found.group(2)) != PROBE_VERSION:
        return None
    return int(found.group(3))


def probe_comment(probe: ProbeResult, rows: int) -> str:
    """What a passed probe records on the index; search functions read `ef_search=<n>`."""
    return (
        f"ef_search={probe.ef_search} min_recall@10={probe.min_recall:.2f}"
        f" probe_queries={probe.queries} probe={PROBE_VERSION} rows={rows}"
    )


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


def comment_index_sql(name: str, comment: str) -> str:
    """COMMENT ON INDEX for one of our per-tenant indexes (what its probe found)."""
    if all(tenant_of_index(name, table) is None for table in VECTOR_TABLES):
        raise ValueError(f"{name!r} is not a per-tenant vector index")
    if not re.fullmatch(r"[\w@.= ]+", comment):
        raise ValueError(f"{comment!r} is not a probe comment")
    return f"COMMENT ON INDEX {name} IS '{comment}'"


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
    probed: dict[str, int | None] | None = None,
) -> list[IndexPlan]:
    """Plan every tenant that has searchable rows or an index; biggest tenants first.

    `probed`: per index, the tenant's rows when its probe passed (None: never probed); an
    index missing from it counts as probed and current.
    """
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
            at = (probed or {}).get(name, rows)
            if action is Action.KEEP and (at is None or rows > RECALIBRATE_GROWTH * at):
                action = Action.CALIBRATE
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
        found = (await session.execute(_tenant_indexes(table))).all()
        indexes = {row[0]: bool(row[1]) for row in found}
        probed = {row[0]: probed_rows(row[2]) for row in found}
        plans += decide(counts, indexes, min_rows, table, probed)
    return plans


async def index_size(connection: AsyncConnection, name: str) -> int:
    """The on-disk size of an index in bytes (0 if it does not exist)."""
    size = await connection.execute(
        text("SELECT pg_relation_size(to_regclass(:name))"), {"name": f"public.{name}"}
    )
    return int(size.scalar() or 0)


def _probe_sample(table: VectorTable) -> TextualSelect:
    return text(
        f"SELECT {table.column} FROM {table.table} WHERE tenant_id = :tenant"  # noqa: S608
        f" AND {table.searchable} ORDER BY random() LIMIT :rows"
    ).columns(**{table.column: Vector(vector_search.EMBEDDING_DIMENSIONS)})


def _probe_exact(table: VectorTable) -> TextClause:
    return text(
        f"SELECT id FROM (SELECT id, {table.column} <=> CAST(:query AS vector) AS distance"  # noqa: S608
        f" FROM {table.table} WHERE tenant_id = :tenant AND {table.searchable} OFFSET 0)"
        " AS scored ORDER BY distance, id LIMIT 10"
    )


def probe_queries(sample: np.ndarray, count: int, seed: int) -> list[list[float]]:
    """`count` unit query vectors drawn like real queries from a sample of a tenant's vectors.

    Around a random row and its nearest rows in the sample (its neighbourhood): one in eight the
    row slightly perturbed, one in eight halfway to a neighbour, and the rest new points of the
    neighbourhood's own distribution (its centre plus a Gaussian combination of its members'
    deviations: the same spread, on no stored row), as real queries fall among the documents.
    Not between far-apart clusters: no real query lands where no document is, and there every
    row is nearly as near as every other, so "the true top 10" is an arbitrary set.
    """
    rng = np.random.default_rng(seed)
    rows = len(sample)
    similarity = sample @ sample.T
    queries = []
    for number in range(count):
        i = int(rng.integers(0, rows))
        neighbourhood = np.argsort(-similarity[i])[: _NEIGHBOURS + 1]
        kind = number % 8
        if kind == 0:
            vector = sample[i] + rng.normal(0, 1e-3, sample.shape[1])
        elif kind == 1:
            vector = sample[i] + sample[rng.choice(neighbourhood)]
        else:
            members = sample[neighbourhood]
            centre = members.mean(axis=0)
            weights = rng.standard_normal(len(members)) / np.sqrt(max(1, len(members) - 1))
            vector = centre + weights @ (members - centre)
        norm = float(np.linalg.norm(vector))
        queries.append((vector / norm if norm else sample[i]).tolist())
    return queries


async def probe_recall(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    table: VectorTable = DOCUMENTS,
    *,
    min_recall: float = MIN_PROBE_RECALL,
    ladder: tuple[int, ...] = EF_SEARCH_LADDER,
) -> ProbeResult:
    """Probe the tenant's new graph on `table`: the ef_search of `ladder` one rung above the
    smallest at which each of PROBE_QUERIES searches finds at least `min_recall` of its true top
    10, if that rung passes too (headroom: the probe's queries are a sample of the real ones).

    `session` is a tenant transaction as app_runtime, like a request's. The search is the
    table's search function itself, with the ef_search to try passed in; a query that did not
    walk the index counts as a miss. Each ef_search stops at its first miss.
    """
    found = await session.execute(
        _probe_sample(table), {"tenant": tenant_id, "rows": _PROBE_SAMPLE_ROWS}
    )
    sample = np.array([np.asarray(vector) for vector in found.scalars()], dtype=np.float64)
    if not len(sample):
        return ProbeResult(None, 0.0, 0)
    queries = probe_queries(sample, PROBE_QUERIES, tenant_id.int % 2**32)
    truths = []
    for query in queries:
        exact = {**vector_search.search_parameters(query, 10, None), "tenant": tenant_id}
        truths.append(set((await session.execute(_probe_exact(table), exact)).scalars()))

    async def lowest_recall(ef_search: int) -> float:
        """The lowest recall@10 over the queries at `ef_search`, stopping at the first miss."""
        lowest = 1.0
        for query, truth in zip(queries, truths, strict=True):
            # No exact-scan floor: the probe tests the graph, whatever the tenant's size.
            parameters = {
                **vector_search.search_parameters(query, 10, None, ef_search=ef_search),
                "exact_min_rows": 0,
            }
            search = text(table.search_sql).bindparams(vector_search.METADATA_FILTER)
            rows = (await session.execute(search, parameters)).all()
            walked = {row[1] for row in rows} == {"hnsw"}
            recall = len(truth & {row[0] for row in rows}) / len(truth) if truth else 1.0
            lowest = min(lowest, recall if walked else 0.0)
            if lowest < min_recall:
                break
        return lowest

    lowest = 0.0
    for rung, ef_search in enumerate(ladder):
        lowest = await lowest_recall(ef_search)
        if lowest < min_recall:
            continue
        # One rung of headroom, verified: the probe's queries are a sample of the real ones.
        headroom = ladder[rung + 1] if rung + 1 < len(ladder) else None
        if headroom is None:
            break
        lowest = min(lowest, await lowest_recall(headroom))
        if lowest >= min_recall:
            return ProbeResult(headroom, lowest, len(queries))
    return ProbeResult(None, lowest, len(queries))


async def apply_plan(
    connection: AsyncConnection,
    plans: list[IndexPlan],
    on_done: Callable[[IndexResult], None] | None = None,
    *,
    probe_sessions: async_sessionmaker[AsyncSession],
    min_recall: float = MIN_PROBE_RECALL,
) -> list[IndexResult]:
    """Carry out `plans` on an AUTOCOMMIT connection of the table's owner, one index at a time.

    Every new (or uncalibrated) index is probed through `probe_sessions` (app_runtime's, as
    requests search): the ef_search found is recorded as its comment, which is what lets the
    search walk it; if none is found, the graph is built once more (BUILD_ATTEMPTS) and probed
    again, and if that one misses too the index is dropped and that tenant keeps the exact scan.
    """
    results = []
    for plan in plans:
        started = time.perf_counter()
        probe = None
        if plan.action in (Action.DROP, Action.DROP_INVALID, Action.REBUILD_INVALID):
            await connection.exec_driver_sql(drop_index_sql(plan.index_name))
        if plan.action in (Action.BUILD, Action.REBUILD_INVALID):
            await connection.exec_driver_sql(create_index_sql(plan.tenant_id, plan.table))
        if plan.action in (Action.BUILD, Action.REBUILD_INVALID, Action.CALIBRATE):
            for attempt in range(BUILD_ATTEMPTS):
                if attempt:
                    # HNSW draws each node's layer at random, so a second build is a new
                    # graph: one that left a true neighbour unreachable rarely does so twice.
                    await connection.exec_driver_sql(drop_index_sql(plan.index_name))
                    await connection.exec_driver_sql(create_index_sql(plan.tenant_id, plan.table))
                async with tenant_transaction(probe_sessions, plan.tenant_id) as session:
                    probe = await probe_recall(
                        session, plan.tenant_id, plan.table, min_recall=min_recall
                    )
                if probe.ef_search is not None:
                    break
        size = await index_size(connection, plan.index_name)
        if probe is not None and probe.ef_search is None:
            await connection.exec_driver_sql(drop_index_sql(plan.index_name))
            plan = replace(plan, action=Action.FAILED_PROBE)
        elif probe is not None:
            await connection.exec_driver_sql(
                comment_index_sql(plan.index_name, probe_comment(probe, plan.searchable_rows))
            )
        result = IndexResult(
            plan,
            time.perf_counter() - started,
            size,
            None if probe is None else probe.min_recall,
            None if probe is None else probe.ef_search,
        )
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
    probe_sessions: async_sessionmaker[AsyncSession],
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
