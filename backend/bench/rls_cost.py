"""What Row-Level Security costs at the SQL level: `make bench-rls`.

For a large, a mid and a small tenant of a cached 1,000,000-document corpus (see corpus.py),
times five request queries three ways, interleaved query by query so machine noise hits all
three alike:

- baseline: the query with an explicit `WHERE tenant_id = …`, as `app_admin` (BYPASSRLS), so
  no policy applies (the table owner sees nothing under FORCE RLS, so it can't be the baseline);
- RLS only: the query with no tenant filter at all, as `app_runtime` with the tenant context
  set, so the policy alone scopes it;
- RLS + WHERE: the baseline's SQL as `app_runtime` under RLS: what the app's services send.

The context is set exactly as app/database/tenant_context.py does, inside the transaction;
only the query statement itself is timed (the set_config round trip is reported on its own).
Prints p50/p95 per variant and the ratios to the baseline; `--explain` also prints the plans
under RLS (EXPLAIN ANALYZE, BUFFERS), showing the tenant index and the InitPlan.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from app.database.roles import ADMIN_ROLE, RUNTIME_ROLE
from bench import corpus as corpus_module
from bench.corpus import Corpus, CorpusSpec, TenantSample

# The statement app/database/tenant_context.py sends (transaction-local, so pooled
# connections never carry a tenant over).
SET_TENANT = "SELECT set_config('app.current_tenant_id', %s, true)"

DOCUMENT_COLUMNS = (
    "id, tenant_id, user_id, s3_key, s3_bucket, filename, content_type, size_bytes, status, "
    "metadata, deleted_at, created_at, updated_at"
)
AUDIT_COLUMNS = (
    "id, tenant_id, user_id, action, resource_type, resource_id, ip_address, user_agent, "
    "metadata, created_at"
)
GOAL_RATIO = 1.10


@dataclass(frozen=True)
class Query:
    """One request query: its SQL without and with the explicit tenant filter."""

    name: str
    rls_only: str  # no tenant filter: the policy alone scopes it
    explicit: str  # `tenant_id = %(tenant_id)s`: what the services send, and the baseline
    params: Callable[[TenantSample, random.Random], dict[str, Any]]
    table: str


def _no_params(_tenant: TenantSample, _rng: random.Random) -> dict[str, Any]:
    return {}


def _document_id(tenant: TenantSample, rng: random.Random) -> dict[str, Any]:
    return {"id": rng.choice(tenant.document_ids)}


def _containment(tenant: TenantSample, rng: random.Random) -> dict[str, Any]:
    # A department and category that occur in the tenant (~1 document in 96 matches each).
    return {"filter": Jsonb(rng.choice(tenant.metadata_filters))}


def _scoped(where: str) -> tuple[str, str]:
    """The WHERE clause without and with the explicit tenant filter."""
    explicit = "tenant_id = %(tenant_id)s" + (f" AND {where}" if where else "")
    return (f"WHERE {where}" if where else ""), f"WHERE {explicit}"


def _query(name: str, table: str, template: str, where: str, params: Callable[..., Any]) -> Query:
    rls_where, explicit_where = _scoped(where)
    return Query(
        name=name,
        rls_only=template.format(where=rls_where),
        explicit=template.format(where=explicit_where),
        params=params,
        table=table,
    )


PAGE = "ORDER BY created_at DESC, id DESC LIMIT 50"
QUERIES = [
    _query(
        "list newest 50 active",
        "documents",
        f"SELECT {DOCUMENT_COLUMNS} FROM documents {{where}} {PAGE}",
        "deleted_at IS NULL",
        _no_params,
    ),
    _query(
        "get by id",
        "documents",
        f"SELECT {DOCUMENT_COLUMNS} FROM documents {{where}}",
        "id = %(id)s AND deleted_at IS NULL",
        _document_id,
    ),
    _query(
        "count active",
        "documents",
        "SELECT count(*) FROM documents {where}",
        "deleted_at IS NULL",
        _no_params,
    ),
    _query(
        "metadata @> page of 50",
        "documents",
        f"SELECT {DOCUMENT_COLUMNS} FROM documents {{where}} {PAGE}",
        "deleted_at IS NULL AND metadata @> %(filter)s",
        _containment,
    ),
    _query(
        "audit-log page of 50",
        "audit_logs",
        f"SELECT {AUDIT_COLUMNS} FROM audit_logs {{where}} {PAGE}",
        "",
        _no_params,
    ),
]


# ---------------------------------------------------------------------------------------------
# Running a query the three ways


@dataclass(frozen=True)
class Variant:
    """How a query is sent: which role, which SQL, whether the tenant context is set."""

    key: str
    label: str
    role: str
    explicit_filter: bool
    sets_context: bool

    def sql(self, query: Query) -> str:
        """The SQL this variant sends for `query`."""
        return query.explicit if self.explicit_filter else query.rls_only


BASELINE = Variant("base", f"baseline ({ADMIN_ROLE}, no RLS)", ADMIN_ROLE, True, False)
RLS_ONLY = Variant("rls", "RLS only", RUNTIME_ROLE, False, True)
RLS_EXPLICIT = Variant("rls+where", "RLS + WHERE", RUNTIME_ROLE, True, True)
VARIANTS = (BASELINE, RLS_ONLY, RLS_EXPLICIT)


def run_in_transaction(
    conn: psycopg.Connection,
    variant: Variant,
    sql: str,
    tenant: TenantSample,
    params: dict[str, Any],
) -> tuple[int, int, list[Any]]:
    """Run one request-shaped transaction; return (set_config ns, query ns, rows)."""
    context_ns = 0
    with conn.transaction(), conn.cursor() as cur:
        if variant.sets_context:
            started = time.perf_counter_ns()
            cur.execute(SET_TENANT, (str(tenant.tenant_id),))
            cur.fetchall()
            context_ns = time.perf_counter_ns() - started
        bound = {"tenant_id": tenant.tenant_id, **params} if variant.explicit_filter else params
        started = time.perf_counter_ns()
        cur.execute(sql, bound)
        rows = cur.fetchall()
        query_ns = time.perf_counter_ns() - started
    return context_ns, query_ns, rows


def connect(corpus: Corpus, role: str) -> psycopg.Connection:
    """A connection as `role`, checked: RLS applies to app_runtime and not to the baseline."""
    conn = psycopg.connect(corpus.dsn(role), autocommit=True)
    row = conn.execute("SELECT current_user, row_security_active('documents')").fetchone()
    if row != (role, role == RUNTIME_ROLE):
        conn.close()
        raise SystemExit(f"expected to run as {role} with RLS {role == RUNTIME_ROLE}, got {row}")
    return conn


def explain(
    conn: psycopg.Connection,
    variant: Variant,
    query: Query,
    tenant: TenantSample,
    params: dict[str, Any],
    *,
    analyze: bool = True,
    json_format: bool = False,
) -> Any:
    """EXPLAIN (ANALYZE, BUFFERS) of `query` sent the way `variant` sends it."""
    options = "ANALYZE, BUFFERS" if analyze else "COSTS"
    if json_format:
        options += ", FORMAT JSON"
    _context, _ns, rows = run_in_transaction(
        conn, variant, f"EXPLAIN ({options}) {variant.sql(query)}", tenant, params
    )
    if json_format:
        return rows[0][0][0]["Plan"]
    return "\n".join(row[0] for row in rows)


# ---------------------------------------------------------------------------------------------
# What a plan shows


@dataclass
class PlanFacts:
    """What a JSON plan says about how the tenant predicate was evaluated."""

    scans: list[dict[str, Any]] = field(default_factory=list)  # nodes reading the table
    init_plans: list[dict[str, Any]] = field(default_factory=list)
    sub_plans: list[dict[str, Any]] = field(default_factory=list)  # correlated: per row

    @property
    def indexes(self) -> set[str]:
        """Names of the indexes the scans of the table use."""
        return {node["Index Name"] for node in self.scans if "Index Name" in node}

    @property
    def sequential(self) -> bool:
        """True if any scan of the table reads it whole."""
        return any(node["Node Type"] == "Seq Scan" for node in self.scans)


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


def plan_facts(plan: dict[str, Any], table: str) -> PlanFacts:
    """Collect the scans of `table` and the init/sub plans of a JSON plan."""
    facts = PlanFacts()
    for node in _walk(plan):
        # A bitmap heap scan names the table; its bitmap index scans below name the index.
        if node.get("Relation Name") == table or node["Node Type"] == "Bitmap Index Scan":
            facts.scans.append(node)
        if node.get("Parent Relationship") == "InitPlan":
            facts.init_plans.append(node)
        if node.get("Parent Relationship") == "SubPlan":
            facts.sub_plans.append(node)
    return facts


def plan_summary(facts: PlanFacts) -> str:
    """A one-line description of the plan for the table."""
    kinds = sorted({node["Node Type"] for node in facts.scans})
    where = ", ".join(sorted(facts.indexes)) or "no index"
    loops = [node.get("Actual Loops") for node in facts.init_plans]
    return f"{'/'.join(kinds)} on {where}; InitPlans={len(facts.init_plans)} loops={loops}"


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass
class Samples:
    """Timings in nanoseconds, keyed by (tenant label, query name, variant key)."""

    query_ns: dict[tuple[str, str, str], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )
    context_ns: list[int] = field(default_factory=list)


def measure(
    corpus: Corpus,
    tenants: list[TenantSample],
    iterations: int,
    warmup: int,
    seed: int = 7,
) -> Samples:
    """Time every query for every tenant, the three variants interleaved in rotating order."""
    rng = random.Random(seed)
    samples = Samples()
    connections = {variant.key: connect(corpus, variant.role) for variant in VARIANTS}
    try:
        for iteration in range(warmup + iterations):
            # Rotate which variant goes first, so none always runs on the warmest caches.
            order = VARIANTS[iteration % 3 :] + VARIANTS[: iteration % 3]
            for tenant in tenants:
                for query in QUERIES:
                    params = query.params(tenant, rng)
                    for variant in order:
                        context_ns, query_ns, _rows = run_in_transaction(
                            connections[variant.key], variant, variant.sql(query), tenant, params
                        )
                        if iteration >= warmup:
                            samples.query_ns[(tenant.label, query.name, variant.key)].append(
                                query_ns
                            )
                            if variant.sets_context:
                                samples.context_ns.append(context_ns)
    finally:
        for conn in connections.values():
            conn.close()
    return samples


def percentile(values: list[int], fraction: float) -> float:
    """The `fraction` quantile (nearest rank) in milliseconds."""
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[rank] / 1e6


def check_results_agree(corpus: Corpus, tenants: list[TenantSample]) -> None:
    """Refuse to time queries that don't return the same rows the three ways."""
    rng = random.Random(11)
    connections = {variant.key: connect(corpus, variant.role) for variant in VARIANTS}
    try:
        for tenant in tenants:
            for query in QUERIES:
                params = query.params(tenant, rng)
                results = {
                    variant.key: run_in_transaction(
                        connections[variant.key], variant, variant.sql(query), tenant, params
                    )[2]
                    for variant in VARIANTS
                }
                if (
                    not results["base"]
                    or len({json.dumps(r, default=str) for r in results.values()}) != 1
                ):
                    raise SystemExit(
                        f"{query.name} for the {tenant.label} tenant: the variants disagree "
                        f"or return nothing ({ {k: len(v) for k, v in results.items()} })"
                    )
    finally:
        for conn in connections.values():
            conn.close()


# ---------------------------------------------------------------------------------------------
# Report


def machine_description(corpus: Corpus) -> list[str]:
    """nproc, CPU model, RAM and the PostgreSQL version, for the report."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        ram = f"{kib / 1024 / 1024:.1f} GiB"
    with psycopg.connect(corpus.dsn()) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        buffers = conn.execute("SHOW shared_buffers").fetchone()
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), {ram} RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}",
        f"PostgreSQL {version[0] if version else '?'}"
        f" (shared_buffers {buffers[0] if buffers else '?'})",
    ]


def print_table(samples: Samples, tenants: list[TenantSample]) -> bool:
    """Print the timings and ratios; return True if every ratio meets the goal."""
    header = (
        f"| {'tenant (active docs)':<20} | {'query':<24} | {'baseline p50/p95 ms':>19} | "
        f"{'RLS only p50/p95 ms':>19} | {'ratio p50/p95':>13} | "
        f"{'RLS+WHERE p50/p95 ms':>20} | {'ratio p50/p95':>13} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    all_met = True
    for tenant in tenants:
        for query in QUERIES:
            cells = {}
            for variant in VARIANTS:
                values = samples.query_ns[(tenant.label, query.name, variant.key)]
                cells[variant.key] = (percentile(values, 0.5), percentile(values, 0.95))
            base50, base95 = cells["base"]
            row = f"| {f'{tenant.label} ({tenant.documents})':<20} | {query.name:<24} | "
            row += f"{f'{base50:.3f} / {base95:.3f}':>19} | "
            for key, width in (("rls", 19), ("rls+where", 20)):
                p50, p95 = cells[key]
                ratio50, ratio95 = p50 / base50, p95 / base95
                all_met &= ratio50 <= GOAL_RATIO
                mark = "" if ratio50 <= GOAL_RATIO else " !"
                row += f"{f'{p50:.3f} / {p95:.3f}':>{width}} | "
                row += f"{f'{ratio50:.2f} / {ratio95:.2f}{mark}':>13} |"
                row += " " if key == "rls" else ""
            print(row)
    return all_met


def print_plans(corpus: Corpus, tenants: list[TenantSample]) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of every query under RLS, both ways the app could send it."""
    rng = random.Random(3)
    with connect(corpus, RUNTIME_ROLE) as conn:
        for tenant in tenants:
            for query in QUERIES:
                params = query.params(tenant, rng)
                for variant in (RLS_ONLY, RLS_EXPLICIT):
                    print(f"\n=== {tenant.label} tenant: {query.name} — {variant.label} ===")
                    print(explain(conn, variant, query, tenant, params))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    defaults = CorpusSpec()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=defaults.documents, help="corpus documents")
    parser.add_argument("--tenants", type=int, default=defaults.tenants, help="corpus tenants")
    parser.add_argument(
        "--iterations", type=int, default=200, help="timed runs of each query, tenant, variant"
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs first")
    parser.add_argument("--explain", action="store_true", help="print the plans under RLS")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached corpus")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build or reuse the corpus, time the queries, print the table."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    spec = CorpusSpec(documents=args.docs, tenants=args.tenants)
    print(
        f"corpus: {spec.documents:,} documents over {spec.tenants:,} tenants"
        f" (Zipf s={spec.zipf_exponent})"
    )
    corpus = corpus_module.open_corpus(spec, rebuild=args.rebuild)
    if corpus.build_seconds is None:
        print("corpus: reused from the cache (--rebuild to build it again)")
    else:
        print(f"corpus: built in {corpus.build_seconds:.0f} s")
    for line in machine_description(corpus):
        print(line)
    tenants = corpus_module.sample_tenants(corpus)
    check_results_agree(corpus, tenants)
    if args.explain:
        print_plans(corpus, tenants)
    if args.iterations <= 0:
        return 0
    print(
        f"\ntiming: {args.iterations} runs per cell after {args.warmup} warm-up runs; variants "
        "interleaved query by query; only the query statement is timed"
    )
    started = time.perf_counter()
    samples = measure(corpus, tenants, args.iterations, args.warmup)
    print(f"timing: took {time.perf_counter() - started:.0f} s\n")
    met = print_table(samples, tenants)
    context50 = statistics.median(samples.context_ns) / 1e6
    print(
        "\nset_config(app.current_tenant_id) statement, once per transaction:"
        f" p50 {context50:.3f} ms (not in the timings above)"
    )
    print(
        f"goal: every RLS/baseline p50 ratio <= {GOAL_RATIO:.2f}: {'met' if met else 'MISSED (!)'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
