"""A search's latency does not depend on other tenants' data (issue 16's timing channel).

Tenant A is over the index threshold and searches through its own HNSW index. Tenant B holds
a tight cluster of vectors A cannot see. When one index held every tenant, A's searches
toward B's cluster walked B's vectors (and filtered them out) and came back measurably slower
than searches in a random direction: 5-12 ms in 90-100 % of paired rounds. Here A measures
both, 40 paired rounds in alternating order, and the two must be indistinguishable: median
difference under 1 ms, and neither direction slower in more than 60 % of the rounds.

"Slower" means slower beyond the noise floor: by more than NOISE_FLOOR of the round's faster
time. Without a floor, two identically distributed directions are each "slower" in about half
of the rounds, and 40 coin flips exceed 24 in ~15 % of runs (either way). Each direction's
time in a round is the best of REPEATS runs of the same query, which filters out the
scheduler's noise on a busy machine. Against the shared index the difference is several times
the floor in nearly every round, so the test fails there (docs/VECTOR_SEARCH.md records both).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database import vector_search as vector_search_service
from app.database.session import tenant_transaction
from app.models import Document
from testkit.factories import make_tenant_with_vectors

ROUNDS = 40
REPEATS = 3
OWN_DOCS = 400
OTHER_CLUSTER_DOCS = 1500
THRESHOLD = 200  # the index threshold for this test: A (OWN_DOCS) is over it, B is not alone
NOISE_FLOOR = 0.25
MEDIAN_LIMIT_MS = 1.0
MAX_SLOWER_SHARE = 0.60
RNG = np.random.default_rng(1616)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _cluster(centre: np.ndarray, count: int, spread: float) -> np.ndarray:
    return _unit(centre + RNG.standard_normal((count, centre.size)) * spread)


async def _search_ms(
    sessions: async_sessionmaker[AsyncSession], tenant: Any, query: list[float]
) -> float:
    """The best of REPEATS searches for `query`, in ms (the search only, not the transaction)."""
    best = float("inf")
    async with tenant_transaction(sessions, tenant) as session:
        for _ in range(REPEATS):
            started = time.perf_counter()
            hits = await Document.similarity_search(session, query, 10)
            best = min(best, time.perf_counter() - started)
            assert len(hits) == 10
    return best * 1000


async def test_search_time_does_not_depend_on_another_tenants_cluster(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
    maintain_vector_indexes: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(vector_search_service, "EXACT_SCAN_MIN_ROWS", THRESHOLD)
    # B: a tight cluster around one direction (every vector within ~0.01 cosine distance).
    towards_other = _unit(RNG.standard_normal(1024))
    await make_tenant_with_vectors(
        admin_sessions, _cluster(towards_other, OTHER_CLUSTER_DOCS, 0.004)
    )
    # A: its own documents, spread over all directions.
    mine = await make_tenant_with_vectors(
        admin_sessions, _unit(RNG.standard_normal((OWN_DOCS, 1024)))
    )
    await maintain_vector_indexes(THRESHOLD)
    async with tenant_transaction(runtime_sessions, mine) as session:
        query = [float(x) for x in towards_other]
        found = vector_search_service.SEARCH_FUNCTION
        parameters = vector_search_service.search_parameters(query, 10, None)
        strategy = await session.execute(
            found.select().with_only_columns(found.c.strategy), parameters
        )
        assert set(strategy.scalars()) == {"hnsw"}  # A walks an index, its own

    towards: list[float] = []
    random: list[float] = []
    for round_number in range(ROUNDS + 2):
        at_other = [float(x) for x in _cluster(towards_other, 1, 0.004)[0]]
        anywhere = [float(x) for x in _unit(RNG.standard_normal(1024))]
        if round_number % 2:
            other_ms = await _search_ms(runtime_sessions, mine, at_other)
            random_ms = await _search_ms(runtime_sessions, mine, anywhere)
        else:
            random_ms = await _search_ms(runtime_sessions, mine, anywhere)
            other_ms = await _search_ms(runtime_sessions, mine, at_other)
        if round_number >= 2:  # two warm-up rounds
            towards.append(other_ms)
            random.append(random_ms)

    differences = [a - b for a, b in zip(towards, random, strict=True)]
    towards_slower = sum(a > b * (1 + NOISE_FLOOR) for a, b in zip(towards, random, strict=True))
    random_slower = sum(b > a * (1 + NOISE_FLOOR) for a, b in zip(towards, random, strict=True))
    summary = (
        f"median difference {statistics.median(differences):.3f} ms; toward the other tenant "
        f"slower in {towards_slower}/{ROUNDS}, random slower in {random_slower}/{ROUNDS}; "
        f"medians {statistics.median(towards):.2f} / {statistics.median(random):.2f} ms"
    )
    print(summary)
    assert abs(statistics.median(differences)) < MEDIAN_LIMIT_MS, summary
    assert towards_slower <= MAX_SLOWER_SHARE * ROUNDS, summary
    assert random_slower <= MAX_SLOWER_SHARE * ROUNDS, summary
