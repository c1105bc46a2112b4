"""Per-tenant HNSW indexes: planned per tenant size, used only by their own tenant, and a
tenant whose index is being built (or whose build failed half way) still answers exactly."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.cli.vector_indexes import start_background_maintenance
from app.core.config import Settings
from app.database import vector_search as vector_search_service
from app.database.engine import targets_for
from app.database.session import admin_transaction, tenant_transaction
from app.models import Document
from app.services import vector_indexes as vector_indexes_service
from app.services.vector_indexes import Action
from testkit import database_harness as harness
from testkit.factories import make_tenant_with_vectors
from tests.conftest import MigratedDatabase

THRESHOLD = 40
# The documents indexes whose first column is tenant_id (an index scan on one with
# `tenant_id = $n` reads only that tenant's rows).
TENANT_LEADING_BTREES = {
    "idx_documents_tenant_embedded",
    "idx_documents_tenant_user",
    "idx_documents_tenant_status",
    "idx_documents_tenant_created",
}
RNG = np.random.default_rng(16)


def unit_vectors(count: int) -> np.ndarray:
    """Random directions in 1024 dimensions."""
    vectors = RNG.standard_normal((count, 1024))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, ids: list[uuid.UUID], query: np.ndarray, k: int) -> list[Any]:
    """The exact k nearest ids by (cosine distance, id)."""
    scored = sorted(zip((1.0 - vectors @ query).tolist(), ids, strict=True))
    return [doc_id for _distance, doc_id in scored[:k]]


async def tenant_ids_and_vectors(
    admin_sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID
) -> tuple[list[uuid.UUID], np.ndarray]:
    """A tenant's document ids and vectors, as stored."""
    async with admin_transaction(admin_sessions) as session:
        rows = (
            await session.execute(
                Document.active_query()
                .where(Document.tenant_id == tenant_id)
                .with_only_columns(Document.id, Document.embedding_vector)
            )
        ).all()
    return [row[0] for row in rows], np.array([np.asarray(row[1]) for row in rows])


async def search(
    runtime_sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID, query: np.ndarray
) -> tuple[list[uuid.UUID], set[str]]:
    """The search's hits and the path search_documents() took."""
    values = [float(x) for x in query]
    async with tenant_transaction(runtime_sessions, tenant_id) as session:
        hits = await Document.similarity_search(session, values, 10)
        parameters = vector_search_service.search_parameters(values, 10, None)
        found = vector_search_service.SEARCH_FUNCTION
        strategies = set(
            (await session.execute(found.select().with_only_columns(found.c.strategy), parameters))
            .scalars()
            .all()
        )
    return [hit.document.id for hit in hits], strategies


def test_plan_builds_above_the_threshold_keeps_with_hysteresis_and_replaces_invalid() -> None:
    big, grown, shrunk, gone, broken, crashed = (uuid.uuid4() for _ in range(6))
    name = vector_indexes_service.index_name
    counts = {big: 5000, grown: 1001, shrunk: 600, gone: 10, broken: 3000, crashed: 20}
    indexes = {
        name(big): True,
        name(shrunk): True,  # 600 >= 1000 // 2: kept, so a tenant near the threshold won't flap
        name(gone): True,
        name(broken): False,  # a CREATE INDEX CONCURRENTLY that failed half way
        name(crashed): False,
        "idx_documents_tenant_embedded": True,  # not ours: ignored
    }
    plans = {p.tenant_id: p.action for p in vector_indexes_service.decide(counts, indexes, 1000)}
    assert plans == {
        big: Action.KEEP,
        grown: Action.BUILD,
        shrunk: Action.KEEP,
        gone: Action.DROP,
        broken: Action.REBUILD_INVALID,
        crashed: Action.DROP_INVALID,
    }
    with pytest.raises(ValueError, match="not a per-tenant vector index"):
        vector_indexes_service.drop_index_sql("idx_documents_tenant_embedded")


async def test_each_search_walks_its_own_tenants_index_and_no_other(
    admin_sessions: async_sessionmaker[AsyncSession],
    maintain_vector_indexes: Any,
    migrated_db: MigratedDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """auto_explain prints the plan of the statement the function runs inside itself."""
    monkeypatch.setattr(vector_search_service, "EXACT_SCAN_MIN_ROWS", THRESHOLD // 2)
    first = await make_tenant_with_vectors(admin_sessions, unit_vectors(THRESHOLD + 20))
    second = await make_tenant_with_vectors(admin_sessions, unit_vectors(THRESHOLD + 20))
    await maintain_vector_indexes(THRESHOLD)
    query = "[" + ",".join(map(repr, unit_vectors(1)[0].tolist())) + "]"
    for tenant, other in ((first, second), (second, first)):
        plans: list[str] = []
        async with await psycopg.AsyncConnection.connect(
            harness.libpq(migrated_db.superuser_url), autocommit=True
        ) as conn:
            conn.add_notice_handler(
                lambda notice, plans=plans: plans.append(notice.message_primary or "")
            )
            await conn.execute("LOAD 'auto_explain'")
            await conn.execute(
                "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements"
                " = on; SET auto_explain.log_level = notice; SET role = app_runtime"
            )
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('app.current_tenant_id', %s, true)", (str(tenant),)
                )
                rows = await conn.execute(
                    "SELECT strategy FROM search_documents(%s::vector, 10, NULL, NULL, NULL,"
                    " %s, %s, 100, 20000)",
                    (query, THRESHOLD // 2, vector_search_service.HNSW_MIN_SHARE),
                )
                assert {row[0] for row in await rows.fetchall()} == {"hnsw"}
        walk = [plan for plan in plans if "<=>" in plan and "LIMIT $5" in plan]
        assert len(walk) == 1, plans
        own = vector_indexes_service.index_name(tenant)
        assert f"Index Scan using {own} on documents" in walk[0]
        assert vector_indexes_service.index_name(other) not in "".join(plans)


async def test_a_tenant_answers_exactly_while_its_index_builds_and_after_a_failed_build(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    owner_engine: AsyncEngine,
    maintain_vector_indexes: Any,
    migrated_db: MigratedDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(vector_search_service, "EXACT_SCAN_MIN_ROWS", THRESHOLD // 2)
    tenant = await make_tenant_with_vectors(admin_sessions, unit_vectors(THRESHOLD + 30))
    ids, vectors = await tenant_ids_and_vectors(admin_sessions, tenant)
    query = unit_vectors(1)[0]
    expected = exact_top(vectors, ids, query, 10)
    name = vector_indexes_service.index_name(tenant)
    superuser = harness.libpq(migrated_db.superuser_url)

    async def index_state() -> tuple[bool, bool] | None:
        async with await psycopg.AsyncConnection.connect(superuser) as conn:
            row = await (
                await conn.execute(
                    "SELECT i.indisvalid, i.indisready FROM pg_index i"
                    " WHERE i.indexrelid = to_regclass(%s)",
                    (f"public.{name}",),
                )
            ).fetchone()
        return None if row is None else (row[0], row[1])

    # A writer's open transaction makes CREATE INDEX CONCURRENTLY wait after it has created
    # the (not yet valid) index: the state of every build in progress.
    async with await psycopg.AsyncConnection.connect(superuser) as blocker:
        await blocker.execute("LOCK TABLE documents IN ROW EXCLUSIVE MODE")
        async with owner_engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            pid = (await autocommit.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
            build = asyncio.create_task(
                autocommit.exec_driver_sql(vector_indexes_service.create_index_sql(tenant))
            )
            for _ in range(200):
                if await index_state() is not None:
                    break
                await asyncio.sleep(0.05)
            assert await index_state() == (False, False)
            # Meanwhile the tenant is searched exactly, and right.
            assert await search(runtime_sessions, tenant, query) == (expected, {"exact"})
            # The build dies half way (cancelled, as a crash or a timeout would end it).
            async with await psycopg.AsyncConnection.connect(superuser, autocommit=True) as admin:
                await admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
            with pytest.raises(Exception, match="cancel"):
                await build
        await blocker.rollback()

    # It left an INVALID index behind: never used, and the next run rebuilds it.
    assert await index_state() is not None
    assert (await index_state() or (True,))[0] is False
    assert await search(runtime_sessions, tenant, query) == (expected, {"exact"})
    results = await maintain_vector_indexes(THRESHOLD)
    mine = next(r for r in results if r.plan.tenant_id == tenant)
    assert mine.plan.action is Action.REBUILD_INVALID
    assert await index_state() == (True, True)
    hits, strategies = await search(runtime_sessions, tenant, query)
    assert strategies == {"hnsw"}
    assert hits == expected


async def test_a_build_whose_probe_misses_is_dropped_and_the_tenant_stays_exact(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    maintenance_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(vector_search_service, "EXACT_SCAN_MIN_ROWS", THRESHOLD // 2)
    tenant = await make_tenant_with_vectors(admin_sessions, unit_vectors(THRESHOLD + 25))
    ids, vectors = await tenant_ids_and_vectors(admin_sessions, tenant)
    query = unit_vectors(1)[0]
    # No graph can meet a recall above 1: the probe must fail, and the index go.
    results = await vector_indexes_service.maintain_indexes(
        maintenance_engine, THRESHOLD, probe_sessions=runtime_sessions, min_recall=1.01
    )
    mine = next(r for r in results if r.plan.tenant_id == tenant)
    assert mine.plan.action is Action.FAILED_PROBE
    assert mine.probe_recall == 1.0  # the probe ran through the index, and it did find them
    assert await search(runtime_sessions, tenant, query) == (
        exact_top(vectors, ids, query, 10),
        {"exact"},
    )
    # With the real bar the same graph passes and is kept.
    results = await vector_indexes_service.maintain_indexes(
        maintenance_engine, THRESHOLD, probe_sessions=runtime_sessions
    )
    mine = next(r for r in results if r.plan.tenant_id == tenant)
    assert mine.plan.action is Action.BUILD
    assert mine.probe_recall is not None
    assert mine.probe_recall >= 0.99
    assert (await search(runtime_sessions, tenant, query))[1] == {"hnsw"}


async def test_a_graph_whose_probe_misses_is_built_once_more_and_kept_when_that_one_passes(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    maintenance_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HNSW graphs are random draws: a build that left a true neighbour unreachable (its probe
    misses at every ef_search) is built again before its tenant is left on the exact scan."""
    monkeypatch.setattr(vector_search_service, "EXACT_SCAN_MIN_ROWS", THRESHOLD // 2)
    tenant = await make_tenant_with_vectors(admin_sessions, unit_vectors(THRESHOLD + 25))
    real_probe = vector_indexes_service.probe_recall
    probed_graphs: list[int] = []

    async def first_graph_misses(
        session: AsyncSession, tenant_id: uuid.UUID, *args: Any, **kwargs: Any
    ) -> vector_indexes_service.ProbeResult:
        # The first graph stands for an unlucky build: its probe result is a miss.
        probed_graphs.append(await index_oid(session, tenant_id))
        result = await real_probe(session, tenant_id, *args, **kwargs)
        if len(probed_graphs) == 1:
            return vector_indexes_service.ProbeResult(None, 0.9, result.queries)
        return result

    monkeypatch.setattr(vector_indexes_service, "probe_recall", first_graph_misses)
    results = await vector_indexes_service.maintain_indexes(
        maintenance_engine, THRESHOLD, probe_sessions=runtime_sessions, tenants={tenant}
    )
    (mine,) = results
    assert mine.plan.action is Action.BUILD
    assert mine.ef_search is not None
    assert len(probed_graphs) == vector_indexes_service.BUILD_ATTEMPTS == 2
    assert probed_graphs[0] != probed_graphs[1], "the second probe must see a new graph"
    assert (await search(runtime_sessions, tenant, unit_vectors(1)[0]))[1] == {"hnsw"}


async def index_oid(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """The oid of the tenant's own documents index (a rebuilt index has a new one)."""
    name = vector_indexes_service.index_name(tenant_id)
    found = await session.execute(
        text("SELECT CAST(to_regclass(:name) AS oid)"), {"name": f"public.{name}"}
    )
    return int(found.scalar_one())


async def test_make_run_builds_a_new_large_tenants_index_without_anyone_running_the_command(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    migrated_db: MigratedDatabase,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop `make run` starts (VECTOR_INDEX_INTERVAL_SECONDS) indexes a tenant that grew."""
    monkeypatch.setattr(vector_search_service, "EXACT_SCAN_MIN_ROWS", THRESHOLD // 2)
    vectors = unit_vectors(THRESHOLD + 20)
    tenant = await make_tenant_with_vectors(admin_sessions, vectors)
    name = vector_indexes_service.index_name(tenant)
    off = settings.model_copy(update={"VECTOR_INDEX_INTERVAL_SECONDS": 0})
    targets = targets_for(migrated_db.owner_url, harness.RUNTIME_PASSWORD)
    assert start_background_maintenance(off, targets) is None
    scheduled = settings.model_copy(
        update={"VECTOR_INDEX_MIN_ROWS": THRESHOLD, "VECTOR_INDEX_INTERVAL_SECONDS": 1}
    )
    maintenance = start_background_maintenance(scheduled, targets)
    assert maintenance is not None
    try:
        valid = False
        for _ in range(600):  # up to 60 s on a loaded machine
            async with await psycopg.AsyncConnection.connect(
                harness.libpq(migrated_db.superuser_url), autocommit=True
            ) as conn:
                row = await (
                    await conn.execute(
                        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c"
                        " ON c.oid = i.indexrelid WHERE c.relname = %s",
                        (name,),
                    )
                ).fetchone()
            valid = bool(row and row[0])
            if valid:
                break
            await asyncio.sleep(0.1)
    finally:
        maintenance.stop(timeout=120)
    assert valid, "the background maintenance never built the tenant's index"
    assert not maintenance.thread.is_alive()
    ids, stored = await tenant_ids_and_vectors(admin_sessions, tenant)
    found, strategies = await search(runtime_sessions, tenant, vectors[0])
    assert strategies == {"hnsw"}
    assert found == exact_top(stored, ids, vectors[0], 10)


async def test_a_small_tenants_exact_scan_reads_its_rows_through_the_tenant_index(
    admin_sessions: async_sessionmaker[AsyncSession],
    maintain_vector_indexes: Any,
    migrated_db: MigratedDatabase,
) -> None:
    """The function's static statements use generic plans (planned once per session, however
    many per-tenant indexes exist): the exact scan still reads only the tenant's own rows,
    through a btree led by tenant_id, and never another tenant's index."""
    small = await make_tenant_with_vectors(admin_sessions, unit_vectors(5))
    large = await make_tenant_with_vectors(admin_sessions, unit_vectors(THRESHOLD + 20))
    await maintain_vector_indexes(THRESHOLD)
    bulk = await make_tenant_with_vectors(admin_sessions, unit_vectors(1))
    query = "[" + ",".join(map(repr, unit_vectors(1)[0].tolist())) + "]"
    plans: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        harness.libpq(migrated_db.superuser_url), autocommit=True
    ) as conn:
        # A table of realistic size (a seq scan is the right plan for a few dozen rows): 3,000
        # more rows of another tenant, not indexed.
        await conn.execute(
            "INSERT INTO documents (tenant_id, user_id, s3_key, s3_bucket, filename,"
            " content_type, size_bytes, embedding_vector) SELECT tenant_id, user_id,"
            " s3_key || n, s3_bucket, filename, content_type, size_bytes, embedding_vector"
            " FROM documents, generate_series(1, 3000) AS n WHERE tenant_id = %s",
            (bulk,),
        )
        await conn.execute("ANALYZE documents")  # the plan as on a server whose stats are current
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        await conn.execute("LOAD 'auto_explain'")
        await conn.execute(
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements"
            " = on; SET auto_explain.log_level = notice; SET role = app_runtime"
        )
        for _ in range(7):  # past PostgreSQL's 5 custom plans, were the mode left on auto
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('app.current_tenant_id', %s, true)", (str(small),)
                )
                rows = await conn.execute(
                    "SELECT strategy FROM search_documents(%s::vector, 10, NULL, NULL, NULL,"
                    " %s, %s, 100, 20000)",
                    (query, THRESHOLD // 2, vector_search_service.HNSW_MIN_SHARE),
                )
                assert {row[0] for row in await rows.fetchall()} == {"exact"}
        # Out of later tests' way (not searchable: no index gets built for it).
        await conn.execute("RESET role")
        await conn.execute("UPDATE documents SET deleted_at = now() WHERE tenant_id = %s", (bulk,))
    scans = [plan for plan in plans if "<=>" in plan and "OFFSET 0" in plan]
    assert len(scans) == 7, plans
    for plan in scans:
        # An index or bitmap scan of a btree led by tenant_id: only the tenant's rows are read.
        # Mostly idx_documents_tenant_embedded; when every row is embedded and live it is the
        # size of idx_documents_tenant_user, the two cost the same and either may win.
        scanned = set(re.findall(r"(?:Index Scan|Index Only Scan) (?:on|using) (\w+)", plan))
        assert scanned, plan
        assert scanned <= TENANT_LEADING_BTREES, plan
        assert "Seq Scan" not in plan
        assert "(tenant_id = $" in plan  # a generic plan: the tenant id is a parameter
    assert vector_indexes_service.INDEX_PREFIX not in "".join(scans)
    assert vector_indexes_service.index_name(large) not in "".join(plans)


def test_an_index_never_probed_or_probed_at_under_half_its_rows_is_calibrated_again() -> None:
    probed, unprobed, grown, broken = (uuid.uuid4() for _ in range(4))
    name = vector_indexes_service.index_name
    counts = {probed: 5000, unprobed: 5000, grown: 5000, broken: 5000}
    indexes = {name(t): t is not broken for t in counts}
    at = {name(probed): 3000, name(unprobed): None, name(grown): 2000, name(broken): None}
    plans = {
        p.tenant_id: p.action
        for p in vector_indexes_service.decide(counts, indexes, 1000, probed=at)
    }
    assert plans == {
        probed: Action.KEEP,
        unprobed: Action.CALIBRATE,  # built before probes recorded an ef_search
        grown: Action.CALIBRATE,  # 2.5x the rows it was probed at
        broken: Action.REBUILD_INVALID,
    }
    comment = vector_indexes_service.probe_comment(
        vector_indexes_service.ProbeResult(ef_search=160, min_recall=1.0, queries=60), 5000
    )
    assert vector_indexes_service.probed_rows(comment) == 5000
    # An index probed by an older probe counts as never probed.
    assert vector_indexes_service.probed_rows(comment.replace("probe=", "probe=1")) is None
    assert vector_indexes_service.comment_index_sql(name(probed), comment) == (
        f"COMMENT ON INDEX {name(probed)} IS '{comment}'"
    )
    with pytest.raises(ValueError, match="not a probe comment"):
        vector_indexes_service.comment_index_sql(name(probed), "x'; DROP TABLE documents; --")


def test_probe_queries_land_near_and_between_the_tenants_rows_never_in_empty_space() -> None:
    """Real queries are not copies of stored rows: the probe also draws them between a row and
    its neighbours and at their centre, but never between far-apart clusters, where no document
    is and the true top 10 is an arbitrary set."""
    centres = unit_vectors(2)
    sample = np.repeat(centres, 100, axis=0) + 0.01 * RNG.standard_normal((200, 1024))
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    queries = np.array(vector_indexes_service.probe_queries(sample, 80, seed=1))
    assert queries.shape == (80, 1024)
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0)
    nearest_row = (queries @ sample.T).max(axis=1)
    # One in eight are (almost) stored rows; most sit off every stored row.
    assert (nearest_row > 0.999).sum() >= 10
    assert (nearest_row < 0.99).sum() >= 60
    # Each sits in one cluster: near one centre, as far from the other as its rows are.
    to_centres = np.sort(queries @ centres.T, axis=1)
    assert (to_centres[:, 1] > 0.8).all()
    assert (to_centres[:, 0] < 0.2).all()


async def test_an_index_is_walked_only_at_the_ef_search_its_probe_recorded(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    owner_engine: AsyncEngine,
    maintain_vector_indexes: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An index built but not probed (as every index built before this rule) is not walked:
    the tenant is scanned exactly until the next maintenance run probes it and records the
    smallest ef_search at which every probe query found its true top 10."""
    monkeypatch.setattr(vector_search_service, "EXACT_SCAN_MIN_ROWS", THRESHOLD // 2)
    tenant = await make_tenant_with_vectors(admin_sessions, unit_vectors(THRESHOLD + 30))
    ids, vectors = await tenant_ids_and_vectors(admin_sessions, tenant)
    query = unit_vectors(1)[0]
    expected = exact_top(vectors, ids, query, 10)
    name = vector_indexes_service.index_name(tenant)
    async with owner_engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.exec_driver_sql(vector_indexes_service.create_index_sql(tenant))
    assert await search(runtime_sessions, tenant, query) == (expected, {"exact"})

    results = await maintain_vector_indexes(THRESHOLD)
    mine = next(r for r in results if r.plan.tenant_id == tenant)
    assert mine.plan.action is Action.CALIBRATE
    assert mine.ef_search in vector_indexes_service.EF_SEARCH_LADDER[1:]  # one rung of headroom
    assert mine.probe_recall is not None
    assert mine.probe_recall >= vector_indexes_service.MIN_PROBE_RECALL
    async with owner_engine.connect() as connection:
        comment = (
            await connection.exec_driver_sql(
                f"SELECT obj_description('{name}'::regclass, 'pg_class')"
            )
        ).scalar()
    assert comment is not None
    assert comment.startswith(f"ef_search={mine.ef_search} ")
    assert vector_indexes_service.probed_rows(comment) == THRESHOLD + 30
    assert await search(runtime_sessions, tenant, query) == (expected, {"hnsw"})
    # Probed and current: the next run leaves it alone.
    again = await maintain_vector_indexes(THRESHOLD)
    assert next(r for r in again if r.plan.tenant_id == tenant).plan.action is Action.KEEP
