"""Document.similarity_search: nearest first, only the tenant's active documents, strict input."""

from __future__ import annotations

import math

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import tenant_transaction
from app.models import Document, User
from testkit.factories import make_document, provision_tenant

DIMENSIONS = 1024


def direction(angle_degrees: float) -> list[float]:
    """A unit vector in the plane of the first two axes, `angle_degrees` from the first axis."""
    radians = math.radians(angle_degrees)
    return [math.cos(radians), math.sin(radians)] + [0.0] * (DIMENSIONS - 2)


async def test_results_are_ascending_by_cosine_distance_and_tenant_scoped(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    mine = await provision_tenant(admin_sessions)
    theirs = await provision_tenant(admin_sessions)
    # The other tenant holds the vector identical to the query: it must never appear.
    async with tenant_transaction(runtime_sessions, theirs.tenant_id) as session:
        other_user = await session.get_one(User, theirs.user_ids[0])
        await make_document(session, other_user, embedding_vector=direction(0))
    angles = [50, 10, 80, 30, 5]
    async with tenant_transaction(runtime_sessions, mine.tenant_id) as session:
        user = await session.get_one(User, mine.user_ids[0])
        by_angle = {
            angle: (await make_document(session, user, embedding_vector=direction(angle))).id
            for angle in angles
        }
        deleted = await make_document(session, user, embedding_vector=direction(1))
        deleted.soft_delete()
        await make_document(session, user)  # no embedding yet: not searchable
        await session.flush()
        hits = await Document.similarity_search(session, direction(0), k=10)

    assert [hit.document.id for hit in hits] == [by_angle[a] for a in sorted(angles)]
    distances = [hit.distance for hit in hits]
    assert distances == sorted(distances)
    for hit, angle in zip(hits, sorted(angles), strict=True):
        assert hit.distance == pytest.approx(1 - math.cos(math.radians(angle)), abs=1e-6)
    assert all(hit.document.tenant_id == mine.tenant_id for hit in hits)


async def test_k_limits_the_results(
    admin_sessions: async_sessionmaker[AsyncSession],
    runtime_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await provision_tenant(admin_sessions)
    async with tenant_transaction(runtime_sessions, tenant.tenant_id) as session:
        user = await session.get_one(User, tenant.user_ids[0])
        for angle in (1, 2, 3, 4):
            await make_document(session, user, embedding_vector=direction(angle))
        hits = await Document.similarity_search(session, direction(0), k=2)
    assert len(hits) == 2


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        ([0.5] * 1023, "exactly 1024 numbers, got 1023"),
        ([0.5] * 1025, "exactly 1024 numbers, got 1025"),
        ([0.5] * 1023 + [math.nan], "finite"),
        ([0.5] * 1023 + [math.inf], "finite"),
        ([0.5] * 1023 + ["0.5"], "only numbers"),
        ("0.5, 0.5", "list of numbers"),
    ],
    ids=["1023-dims", "1025-dims", "nan", "inf", "string-item", "string"],
)
async def test_bad_embedding_is_refused_with_a_clear_error(
    runtime_sessions: async_sessionmaker[AsyncSession], embedding: object, message: str
) -> None:
    async with runtime_sessions() as session:
        with pytest.raises(ValueError, match=message):
            await Document.similarity_search(session, embedding, k=5)


@pytest.mark.parametrize("k", [0, -1, 101, True, 2.5])
async def test_k_outside_1_to_100_is_refused(
    runtime_sessions: async_sessionmaker[AsyncSession], k: object
) -> None:
    async with runtime_sessions() as session:
        with pytest.raises(ValueError, match="k must be an integer from 1 to 100"):
            await Document.similarity_search(session, direction(0), k=k)  # type: ignore[arg-type]
