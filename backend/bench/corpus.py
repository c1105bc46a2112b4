"""A large, realistic multi-tenant corpus for the benchmarks, built once and cached.

Tenant sizes follow Zipf's law (the k-th largest tenant holds ~1/k of the largest one's
documents), as in real SaaS platforms: one tenant with a hundred thousand documents and a long
tail with a few hundred. Rows arrive interleaved in time order, as they would in production,
so a tenant's rows are spread over the heap rather than packed together.

The schema comes from the project's own migrations (at head), run by a non-superuser login
that owns the tables; rows are loaded with COPY as the provisioning role `app_admin`
(BYPASSRLS: under FORCE RLS even the owner could not insert). A fingerprint of the schema and
of the corpus parameters is kept as the database's comment, so a stale cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from app.core.config import BACKEND_DIR, load_settings, normalise_database_url
from app.database import migrations
from app.database.engine import session_options
from app.database.roles import ADMIN_ROLE
from testkit import database_harness as harness

logger = logging.getLogger(__name__)

CACHE_DIR = BACKEND_DIR / "bench" / ".cache"
BENCH_DATABASE = "rls_bench"
GENERATOR_VERSION = 1  # bump when the shape of the generated data changes

DEPARTMENTS = (
    "cardiology", "oncology", "radiology", "pediatrics", "neurology", "dermatology",
    "orthopedics", "psychiatry", "urology", "nephrology", "endocrinology", "billing",
)  # fmt: skip
CATEGORIES = ("lab", "imaging", "referral", "discharge", "consent", "invoice", "note", "scan")
YEARS = tuple(range(2016, 2026))
AUDIT_ACTIONS = ("document.create", "document.read", "document.update", "document.delete")
CONTENT_TYPES = ("application/pdf", "image/png", "image/jpeg", "text/plain")
DELETED_FRACTION = 0.05
CHUNK_ROWS = 50_000
# Audit rows go through the chain trigger, which updates the tenant's head row once per row.
# In one transaction every update leaves a version no one can prune yet, and each next update
# walks them all (quadratic: 500k rows did not finish in 8 minutes); committing every couple of
# thousand rows keeps the chains short (issue 20).
AUDIT_COMMIT_ROWS = 2_000
NULL = "\\N"  # COPY's text-format NULL
_EPOCH_2024 = 1_704_067_200  # 2024-01-01T00:00:00Z; rows span the two years before "now"
_SPAN_SECONDS = 2 * 365 * 24 * 3600


@dataclass(frozen=True)
class CorpusSpec:
    """What to generate: sizes and the random seed (the same spec always gives the same rows)."""

    documents: int = 1_000_000
    tenants: int = 1_000
    zipf_exponent: float = 1.0
    max_users_per_tenant: int = 20
    documents_per_audit_row: int = 2
    seed: int = 20251016


@dataclass(frozen=True)
class TenantSample:
    """A tenant picked for measurement, with a few of its ids to query by."""

    label: str
    tenant_id: uuid.UUID
    documents: int
    document_ids: list[uuid.UUID]
    # {"department": …, "category": …} of those documents: containment filters that match
    metadata_filters: list[dict[str, str]]


@dataclass(frozen=True)
class Corpus:
    """A loaded corpus and the logins that reach it."""

    owner_url: URL  # the migrating login: owns the tables, loads the rows as app_admin
    superuser_url: URL
    spec: CorpusSpec
    build_seconds: float | None  # None when the cache was reused

    def dsn(self, role: str | None = None) -> str:
        """A libpq DSN for the server's superuser login, switched to `role` at connection start.

        Every variant logs in the same way and differs only in its role; after the switch the
        session has exactly that role's rights (RLS applies to app_runtime as to its own login).
        """
        dsn = harness.libpq(self.superuser_url)
        if role is None:
            return dsn
        # The app's own connection settings (timeouts, plan_cache_mode), so plans match its.
        options = session_options(load_settings(ENVIRONMENT="test"), role=role)
        return psycopg.conninfo.make_conninfo(dsn, options=options)


def zipf_sizes(total: int, buckets: int, exponent: float) -> np.ndarray:
    """`buckets` positive integers summing to `total`, the k-th proportional to 1/k**exponent."""
    if buckets < 1 or total < buckets:
        raise ValueError(f"need at least one document per tenant: {total=} {buckets=}")
    weights = 1.0 / np.arange(1, buckets + 1, dtype=np.float64) ** exponent
    spare = total - buckets  # every tenant gets one, the rest goes by weight
    raw = weights / weights.sum() * spare
    sizes = np.floor(raw).astype(np.int64)
    # Largest remainder: hand the rounding leftovers to the biggest fractional parts.
    leftovers = spare - int(sizes.sum())
    sizes[np.argsort(raw - sizes)[::-1][:leftovers]] += 1
    return sizes + 1


def schema_fingerprint() -> str:
    """Hash of every migration file: changes when the head moves or a migration is edited."""
    digest = hashlib.sha256()
    for path in sorted((BACKEND_DIR / "alembic" / "versions").glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _fingerprint(spec: CorpusSpec) -> str:
    return json.dumps(
        {
            "generator": GENERATOR_VERSION,
            "head": migrations.head_revision(),
            "schema": schema_fingerprint(),
            "spec": asdict(spec),
        },
        sort_keys=True,
    )


# ---------------------------------------------------------------------------------------------
# Where the corpus lives


def bench_server() -> harness.TestServer:
    """BENCH_DATABASE_URL's server if set (a login that may create databases and roles), else
    a persistent embedded server under bench/.cache/, kept between runs."""
    external = os.environ.get("BENCH_DATABASE_URL")
    if external:
        return harness.TestServer(make_url(normalise_database_url(external)))
    from app.database import embedded

    server = embedded.start_embedded(CACHE_DIR / "postgres")
    return harness.TestServer(server.superuser_url("postgres"), embedded=server)


def _stored_fingerprint(server: harness.TestServer, database: str) -> str | None:
    with psycopg.connect(harness.libpq(server.superuser_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (database,),
        ).fetchone()
    return None if row is None else row[0]


def open_corpus(
    spec: CorpusSpec,
    server: harness.TestServer | None = None,
    database: str = BENCH_DATABASE,
    *,
    rebuild: bool = False,
) -> Corpus:
    """The cached corpus for `spec`, (re)built if missing, stale or `rebuild` is asked for."""
    server = server or bench_server()
    harness.ensure_migrator_role(server)
    owner_url = server.url(
        database, username=harness.MIGRATOR_ROLE, password=harness.MIGRATOR_PASSWORD
    )
    wanted = _fingerprint(spec)
    if not rebuild and _stored_fingerprint(server, database) == wanted:
        return Corpus(owner_url, server.url(database), spec, build_seconds=None)
    started = time.perf_counter()
    _recreate_database(server, database)
    # No runtime password: the benchmark switches roles at connection start (the app's
    # fallback login mode), so it never changes the password of a shared server's app_runtime.
    migrations.upgrade(owner_url, None)
    load(harness.libpq(owner_url), spec)
    with psycopg.connect(harness.libpq(server.superuser_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(database), sql.Literal(wanted)
            )
        )
    return Corpus(owner_url, server.url(database), spec, time.perf_counter() - started)


def _recreate_database(server: harness.TestServer, database: str) -> None:
    with psycopg.connect(harness.libpq(server.superuser_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(harness.MIGRATOR_ROLE)
            )
        )
    harness.bootstrap_least_privilege(server, database)


# ---------------------------------------------------------------------------------------------
# Generating and loading the rows


def _uuids(rng: np.random.Generator, count: int) -> list[uuid.UUID]:
    raw = rng.integers(0, 256, size=(count, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4, as gen_random_uuid() makes
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    return [uuid.UUID(bytes=row.tobytes()) for row in raw]


def _timestamps(seconds: np.ndarray) -> list[str]:
    micros = (seconds * 1_000_000).astype("datetime64[us]")
    return [f"{text}+00" for text in micros.astype(str)]


def _chunks(rows: int, size: int = CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, rows, size):
        yield slice(start, min(start + size, rows))


def load(owner_dsn: str, spec: CorpusSpec) -> None:
    """Generate the corpus for `spec` and COPY it into a freshly migrated database."""
    rng = np.random.default_rng(spec.seed)
    sizes = zipf_sizes(spec.documents, spec.tenants, spec.zipf_exponent)
    tenant_ids = _uuids(rng, spec.tenants)
    users_per_tenant = rng.integers(1, spec.max_users_per_tenant + 1, size=spec.tenants)
    user_ids = _uuids(rng, int(users_per_tenant.sum()))
    first_user = np.concatenate(([0], np.cumsum(users_per_tenant)[:-1]))

    # Documents, in arrival order across all tenants.
    doc_tenant = np.repeat(np.arange(spec.tenants), sizes)
    order = rng.permutation(spec.documents)
    doc_tenant = doc_tenant[order]
    doc_created = np.sort(rng.uniform(0, _SPAN_SECONDS, spec.documents)) + _EPOCH_2024
    doc_user = first_user[doc_tenant] + rng.integers(0, users_per_tenant[doc_tenant])
    doc_ids = _uuids(rng, spec.documents)

    with psycopg.connect(owner_dsn) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        dropped = _drop_secondary_indexes(conn, ("documents", "audit_logs"))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ADMIN_ROLE)))
        with conn.cursor() as cur:
            _copy_tenants(cur, tenant_ids)
            _copy_users(cur, tenant_ids, users_per_tenant, user_ids)
            rows = _Rows(tenant_ids, user_ids, doc_tenant, doc_user, doc_ids, doc_created)
            _copy_documents(cur, spec, rng, rows)
        _copy_audit_logs(conn, spec, rng, rows)
        conn.execute("RESET ROLE")
        _recreate_indexes(conn, dropped)
        rebuilt = _secondary_indexes(conn, ("documents", "audit_logs"))
        if sorted(definition for _name, definition in rebuilt) != sorted(dropped):
            raise RuntimeError("the rebuilt indexes differ from the migrated ones")
        conn.commit()
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        # VACUUM sets the visibility map, so index-only scans (the counts) work as in production.
        conn.execute("VACUUM (ANALYZE) tenants, users, documents, audit_logs")


def _secondary_indexes(conn: psycopg.Connection, tables: tuple[str, ...]) -> list[Any]:
    """(name, definition) of the indexes of `tables` that no constraint depends on."""
    return conn.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        WHERE i.indrelid = ANY(%s::regclass[])
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        ORDER BY 1
        """,
        (list(tables),),
    ).fetchall()


def _drop_secondary_indexes(conn: psycopg.Connection, tables: tuple[str, ...]) -> list[str]:
    """Drop the indexes no constraint depends on; return their exact definitions to rebuild.

    Building them once after the load is several times faster than updating them per row.
    """
    rows = _secondary_indexes(conn, tables)
    for name, _definition in rows:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return [definition for _name, definition in rows]


def _recreate_indexes(conn: psycopg.Connection, definitions: list[str]) -> None:
    for definition in definitions:
        conn.execute(definition)  # pg_get_indexdef output: the index exactly as migrated


def _copy_tenants(cur: psycopg.Cursor, tenant_ids: list[uuid.UUID]) -> None:
    with cur.copy("COPY tenants (id, name) FROM STDIN") as copy:
        copy.write("".join(f"{tid}\tBench tenant {n:04d}\n" for n, tid in enumerate(tenant_ids)))


def _copy_users(
    cur: psycopg.Cursor,
    tenant_ids: list[uuid.UUID],
    users_per_tenant: np.ndarray,
    user_ids: list[uuid.UUID],
) -> None:
    lines = []
    next_user = 0
    for n, tid in enumerate(tenant_ids):
        for k in range(int(users_per_tenant[n])):
            role = "admin" if k == 0 else "member"
            lines.append(
                f"{user_ids[next_user]}\t{tid}\tuser{k}@tenant{n:04d}.example\t"
                f"sub-{n:04d}-{k}\tBench User {k}\t{role}\n"
            )
            next_user += 1
    with cur.copy(
        "COPY users (id, tenant_id, email, external_idp_id, full_name, role) FROM STDIN"
    ) as copy:
        copy.write("".join(lines))


@dataclass(frozen=True)
class _Rows:
    """The generated ids, and per document (in arrival order) its tenant, uploader, creation."""

    tenant_ids: list[uuid.UUID]
    user_ids: list[uuid.UUID]
    doc_tenant: np.ndarray  # index into tenant_ids
    doc_user: np.ndarray  # index into user_ids
    doc_ids: list[uuid.UUID]
    doc_created: np.ndarray  # epoch seconds, ascending


def _copy_documents(
    cur: psycopg.Cursor, spec: CorpusSpec, rng: np.random.Generator, rows: _Rows
) -> None:
    tenant_ids, user_ids, doc_ids = rows.tenant_ids, rows.user_ids, rows.doc_ids
    doc_tenant, doc_user, doc_created = rows.doc_tenant, rows.doc_user, rows.doc_created
    n = spec.documents
    department = rng.integers(0, len(DEPARTMENTS), n)
    category = rng.integers(0, len(CATEGORIES), n)
    year = rng.integers(0, len(YEARS), n)
    confidential = rng.random(n) < 0.2
    status = rng.choice(3, size=n, p=[0.85, 0.10, 0.05])
    statuses = ("completed", "processing", "failed")
    content = rng.integers(0, len(CONTENT_TYPES), n)
    size_bytes = rng.lognormal(mean=12.0, sigma=1.5, size=n).astype(np.int64)
    deleted = rng.random(n) < DELETED_FRACTION
    columns = (
        "id, tenant_id, user_id, s3_bucket, s3_key, filename, content_type, size_bytes, "
        "status, metadata, deleted_at, created_at, updated_at"
    )
    with cur.copy(f"COPY documents ({columns}) FROM STDIN") as copy:
        for part in _chunks(n):
            created = _timestamps(doc_created[part])
            deleted_at = _timestamps(doc_created[part] + 86_400)
            lines = []
            for i, row in enumerate(range(part.start, part.stop)):
                metadata = (
                    f'{{"department": "{DEPARTMENTS[department[row]]}", '
                    f'"category": "{CATEGORIES[category[row]]}", '
                    f'"year": {YEARS[year[row]]}, '
                    f'"confidential": {"true" if confidential[row] else "false"}}}'
                )
                doc_id = doc_ids[row]
                lines.append(
                    f"{doc_id}\t{tenant_ids[doc_tenant[row]]}\t{user_ids[doc_user[row]]}\t"
                    f"bench-bucket\tdocs/{doc_id}.bin\tdocument-{row}.pdf\t"
                    f"{CONTENT_TYPES[content[row]]}\t{size_bytes[row]}\t"
                    f"{statuses[status[row]]}\t{metadata}\t"
                    f"{deleted_at[i] if deleted[row] else NULL}\t{created[i]}\t{created[i]}\n"
                )
            copy.write("".join(lines))


def _copy_audit_logs(
    conn: psycopg.Connection, spec: CorpusSpec, rng: np.random.Generator, rows: _Rows
) -> None:
    tenant_ids, user_ids, doc_ids = rows.tenant_ids, rows.user_ids, rows.doc_ids
    doc_tenant, doc_user, doc_created = rows.doc_tenant, rows.doc_user, rows.doc_created
    # One audit row per `documents_per_audit_row` documents, about a random document each, a
    # little after it was created; every tenant's audit log grows with its documents.
    n = spec.documents // spec.documents_per_audit_row
    about = np.sort(rng.choice(spec.documents, size=n, replace=False))
    created = doc_created[about] + rng.uniform(1, 3600, n)
    order = np.argsort(created, kind="stable")
    about, created = about[order], created[order]
    action = rng.integers(0, len(AUDIT_ACTIONS), n)
    system_action = rng.random(n) < 0.05
    audit_ids = _uuids(rng, n)
    columns = (
        "id, tenant_id, user_id, action, resource_type, resource_id, ip_address, user_agent, "
        "metadata, created_at"
    )
    for part in _chunks(n, AUDIT_COMMIT_ROWS):
        stamps = _timestamps(created[part])
        lines = []
        for i, row in enumerate(range(part.start, part.stop)):
            doc = about[row]
            user = NULL if system_action[row] else user_ids[doc_user[doc]]
            lines.append(
                f"{audit_ids[row]}\t{tenant_ids[doc_tenant[doc]]}\t{user}\t"
                f"{AUDIT_ACTIONS[action[row]]}\tdocument\t{doc_ids[doc]}\t"
                f"10.{row % 250}.{(row // 250) % 250}.{row % 7 + 1}\tbench-client/1.0\t"
                f'{{"request_id": "{audit_ids[row].hex[:16]}"}}\t{stamps[i]}\n'
            )
        with conn.cursor() as cur, cur.copy(f"COPY audit_logs ({columns}) FROM STDIN") as copy:
            copy.write("".join(lines))
        conn.commit()  # SET ROLE is session-level: it outlives the commit


def sample_tenants(corpus: Corpus, per_tenant_ids: int = 200) -> list[TenantSample]:
    """The largest tenant, one in the geometric middle of the size range, and the smallest."""
    with psycopg.connect(corpus.dsn(ADMIN_ROLE)) as conn:
        sizes = conn.execute(
            "SELECT tenant_id, count(*) FROM documents WHERE deleted_at IS NULL "
            "GROUP BY tenant_id ORDER BY count(*) DESC, tenant_id"
        ).fetchall()
        largest, smallest = sizes[0][1], sizes[-1][1]
        middle_target = (largest * smallest) ** 0.5
        middle = min(sizes, key=lambda row: abs(row[1] - middle_target))
        picks = [("large", sizes[0]), ("mid", middle), ("small", sizes[-1])]
        samples = []
        for label, (tenant_id, count) in picks:
            rows = conn.execute(
                "SELECT id, metadata->>'department', metadata->>'category' FROM documents "
                "WHERE tenant_id = %s AND deleted_at IS NULL ORDER BY md5(id::text) LIMIT %s",
                (tenant_id, per_tenant_ids),
            ).fetchall()
            filters = [{"department": row[1], "category": row[2]} for row in rows]
            samples.append(TenantSample(label, tenant_id, count, [row[0] for row in rows], filters))
    return samples


def cache_size(path: Path = CACHE_DIR) -> int:
    """Bytes used by the cache directory (for the report)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0
