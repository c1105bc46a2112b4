"""A seeded, model-based leak fuzzer: random operations by many tenants, checked against a model.

Operations (create, read, list with filters, search, update, soft delete, restore, user admin,
audit reads, and hostile variants: foreign ids, forged cursors, mass-assigned fields) are
generated up front from a seed, as symbolic references ("the 3rd document of tenant 7"), so the
same list replays on a fresh set of tenants. They run through HTTP (the real app over ASGI) and
through the service layer (direct service calls in tenant transactions), `concurrency` at a time
over a small pool. Operations of one tenant run in list order (so the model is exact), those of
different tenants concurrently. Every response is checked against the model: no id of another
tenant ever appears, lists and searches equal the model's expectation, foreign and deleted ids
are 404, member admin operations 403, nothing is a 5xx. At the end the database (read as the
provisioning role) must equal the model. A failure is shrunk (delta debugging over the recorded
operations, replayed sequentially on fresh tenants) and reported with the seed.
"""

from __future__ import annotations

import time

from tests.fuzz.leak.generation import generate
from tests.fuzz.leak.model import Report
from tests.fuzz.leak.runner import FuzzEnvironment, run_once
from tests.fuzz.leak.shrinker import shrink

__all__ = ["FuzzEnvironment", "Report", "fuzz"]


async def fuzz(
    env: FuzzEnvironment,
    *,
    seed: int,
    operations: int,
    tenants: int = 20,
    concurrency: int = 16,
    shrink_failures: bool = True,
    strict_search: bool = False,
) -> Report:
    """Generate `operations` from `seed`, run them, and shrink any failure."""
    ops = generate(seed, operations, tenants)
    started = time.monotonic()
    fuzzer = await run_once(env, ops, tenants, concurrency, strict_search=strict_search)
    report = Report(
        seed=seed,
        operations=operations,
        tenants=tenants,
        concurrency=concurrency,
        ops_by_kind=fuzzer.ops_by_kind,
        statuses=fuzzer.statuses,
        failures=fuzzer.failures,
        duration=time.monotonic() - started,
        incomplete_searches=fuzzer.incomplete_searches,
    )
    if report.failures and shrink_failures:
        report.shrunk, report.shrink_note = await shrink(
            env, ops, tenants, strict_search=strict_search
        )
    return report
