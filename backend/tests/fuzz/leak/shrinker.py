"""The shrinker: delta debugging over a failing run's operations, replayed alone, fresh tenants."""

from __future__ import annotations

import math
import time

from tests.fuzz.leak.generation import Op
from tests.fuzz.leak.runner import FuzzEnvironment, run_once


async def shrink(
    env: FuzzEnvironment,
    ops: list[Op],
    tenants: int,
    *,
    strict_search: bool = False,
    max_replays: int = 80,
    max_seconds: float = 120.0,
) -> tuple[list[Op] | None, str]:
    """The shortest op list found (delta debugging) that still fails when replayed alone."""
    started = time.monotonic()
    replays = 0

    async def fails(candidate: list[Op]) -> bool:
        nonlocal replays
        replays += 1
        replay = await run_once(env, candidate, tenants, concurrency=1, strict_search=strict_search)
        return bool(replay.failures)

    def spent() -> bool:
        return replays >= max_replays or time.monotonic() - started > max_seconds

    if not await fails(ops):
        return None, "not reproduced by a sequential replay (a concurrency-dependent failure)"
    first = await run_once(env, ops, tenants, concurrency=1, strict_search=strict_search)
    op_failures = [f.op for f in first.failures if f.op is not None]
    if op_failures and len(op_failures) == len(first.failures):
        prefix = [op for op in ops if op.index <= min(op_failures)]
        if await fails(prefix):
            ops = prefix
    granularity = 2
    while len(ops) >= 2 and not spent():
        size = math.ceil(len(ops) / granularity)
        chunks = [ops[i : i + size] for i in range(0, len(ops), size)]
        for chunk in chunks:
            if spent():
                break
            if await fails(chunk):
                ops, granularity = chunk, 2
                break
        else:
            for chunk in chunks:
                if spent():
                    break
                rest = [op for op in ops if op not in chunk]
                if await fails(rest):
                    ops, granularity = rest, max(granularity - 1, 2)
                    break
            else:
                if granularity >= len(ops):
                    break
                granularity = min(len(ops), granularity * 2)
    note = f" [{replays} replays{', budget exhausted' if spent() else ''}]"
    return ops, note
