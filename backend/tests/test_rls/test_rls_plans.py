"""Under RLS, the benchmark's five request queries use the tenant index and read the tenant
context once per statement (an InitPlan run once), never once per row.

Runs the exact queries of bench/rls_cost.py on a small corpus from the same generator (Zipf
tenant sizes, ANALYZEd), as app_runtime with the context set the way the app sets it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from bench import corpus as corpus_module
from bench import rls_cost
from bench.corpus import Corpus, CorpusSpec, TenantSample
from testkit import database_harness as harness

SMALL_CORPUS = CorpusSpec(documents=20_000, tenants=40, seed=7)
QUERY_NAMES = [query.name for query in rls_cost.QUERIES]
TENANT_LABELS = ["large", "mid", "small"]
RLS_VARIANTS = [rls_cost.RLS_ONLY, rls_cost.RLS_EXPLICIT]


@dataclass
class PlanCorpus:
    """The small corpus, its sampled tenants, and a connection as app_runtime."""

    corpus: Corpus
    tenants: dict[str, TenantSample]
    runtime: psycopg.Connection


@pytest.fixture(scope="module")
def plan_corpus(test_server: harness.TestServer) -> Iterator[PlanCorpus]:
    """A throw-away database holding the small corpus (its own, so its statistics are ours)."""
    name = f"test_plans_{random.randrange(16**8):08x}"
    corpus = corpus_module.open_corpus(SMALL_CORPUS, server=test_server, database=name)
    try:
        tenants = {tenant.label: tenant for tenant in corpus_module.sample_tenants(corpus, 20)}
        with rls_cost.connect(corpus, rls_cost.RUNTIME_ROLE) as runtime:
            yield PlanCorpus(corpus, tenants, runtime)
    finally:
        harness.drop_database(test_server, name)


def _plan(
    plan_corpus: PlanCorpus, variant: rls_cost.Variant, query_name: str, label: str
) -> tuple[rls_cost.Query, dict[str, Any]]:
    query = next(q for q in rls_cost.QUERIES if q.name == query_name)
    tenant = plan_corpus.tenants[label]
    params = query.params(tenant, random.Random(1))
    plan = rls_cost.explain(plan_corpus.runtime, variant, query, tenant, params, json_format=True)
    return query, plan


def _conditions(node: dict[str, Any]) -> str:
    keys = ("Index Cond", "Recheck Cond", "Filter", "One-Time Filter")
    return " ".join(str(node.get(key, "")) for key in keys)


def test_the_small_corpus_is_skewed_like_the_large_one(plan_corpus: PlanCorpus) -> None:
    sizes = {label: tenant.documents for label, tenant in plan_corpus.tenants.items()}
    assert sizes["large"] > 5 * sizes["mid"] > 5 * sizes["small"] > 0


@pytest.mark.parametrize("label", TENANT_LABELS)
@pytest.mark.parametrize("query_name", QUERY_NAMES)
@pytest.mark.parametrize("variant", RLS_VARIANTS, ids=lambda v: v.key)
def test_query_uses_the_tenant_index_and_reads_the_context_once(
    plan_corpus: PlanCorpus, variant: rls_cost.Variant, query_name: str, label: str
) -> None:
    query, plan = _plan(plan_corpus, variant, query_name, label)
    facts = rls_cost.plan_facts(plan, query.table)
    summary = rls_cost.plan_summary(facts)

    assert not facts.sequential, summary
    if query_name == "get by id":
        # Looking a row up by primary key is the best plan; the policy then checks its tenant.
        assert facts.indexes == {"pk_documents"}, summary
    else:
        assert facts.indexes, summary
        assert all(name.startswith(f"idx_{query.table}_tenant_") for name in facts.indexes), summary
    # The policy's current_setting() lookup is one InitPlan, run once for the statement...
    assert len(facts.init_plans) == 1, summary
    assert facts.init_plans[0]["Actual Loops"] == 1, summary
    assert "current_setting" not in str(plan).replace(str(facts.init_plans[0]), ""), summary
    # ...and never a correlated SubPlan, which would run per row.
    assert facts.sub_plans == [], summary


@pytest.mark.parametrize("query_name", [n for n in QUERY_NAMES if n != "get by id"])
def test_policy_alone_drives_the_tenant_index(plan_corpus: PlanCorpus, query_name: str) -> None:
    """With no explicit tenant filter, the policy's InitPlan value is the index condition."""
    query, plan = _plan(plan_corpus, rls_cost.RLS_ONLY, query_name, "large")
    facts = rls_cost.plan_facts(plan, query.table)
    index_scans = [node for node in facts.scans if "Index Name" in node]
    assert any(
        "InitPlan 1" in str(node.get("Index Cond", "")) and "tenant_id" in node["Index Cond"]
        for node in index_scans
    ), rls_cost.plan_summary(facts)


def test_get_by_id_checks_the_tenant_against_the_initplan(plan_corpus: PlanCorpus) -> None:
    query, plan = _plan(plan_corpus, rls_cost.RLS_ONLY, "get by id", "mid")
    facts = rls_cost.plan_facts(plan, query.table)
    assert any("InitPlan 1" in _conditions(node) for node in facts.scans)
    assert plan["Actual Rows"] == 1
