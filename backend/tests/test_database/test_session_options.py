"""App connections plan every statement with its actual parameters (the tenant id)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def test_runtime_connections_never_use_generic_plans(runtime_engine: AsyncEngine) -> None:
    # A generic plan is made for the average tenant; with skewed tenant sizes it can be 50x
    # slower for a large one (docs/PERFORMANCE.md), so the app plans each execution.
    async with runtime_engine.connect() as conn:
        mode = (await conn.execute(text("SHOW plan_cache_mode"))).scalar_one()
        role = (await conn.execute(text("SELECT current_user"))).scalar_one()
    assert (mode, role) == ("force_custom_plan", "app_runtime")
