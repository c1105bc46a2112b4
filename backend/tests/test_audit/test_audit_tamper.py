"""Every tamper an attacker with database access could make is detected and located.

The attacker is a superuser with triggers off; each test breaks a tenant of its own in the
tamper database and checks the verifier names that tenant, the sequence number, the row and
what differs.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.session import admin_transaction
from app.schemas.audit_integrity import AuditAnchor, AuditChainVerification, ChainProblem
from app.services import audit_anchor as audit_anchor_service
from app.services import audit_integrity as audit_integrity_service
from tests.conftest import MigratedDatabase
from tests.test_audit.conftest import attacker, new_signing_key, seed_chain

CHAIN_LENGTH = 5


async def _verify(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    anchor: AuditAnchor | None = None,
) -> AuditChainVerification:
    async with admin_transaction(sessions) as session:
        return await audit_integrity_service.verify_chain(
            session, tenant_id=tenant_id, anchor=anchor
        )


async def _anchor(sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID) -> AuditAnchor:
    """Sign and re-open an anchor, as `audit-anchor` then `verify-audit --anchor` would."""
    key, _ = new_signing_key()
    signed = audit_anchor_service.sign_anchor(
        audit_anchor_service.anchor_from_verification(await _verify(sessions, tenant_id)), key
    )
    return audit_anchor_service.open_anchor(signed.model_dump_json(), key.public_key())


def _assert_broken_at(
    report: AuditChainVerification,
    tenant_id: uuid.UUID,
    seq: int,
    row_id: uuid.UUID | None,
    problem: ChainProblem,
) -> None:
    assert not report.ok
    broken = report.first_break
    assert broken is not None
    assert (broken.tenant_id, broken.chain_seq, broken.row_id, broken.problem) == (
        tenant_id,
        seq,
        row_id,
        problem,
    ), broken.detail
    assert report.tenants[0].first_break == broken


async def test_untouched_chain_verifies(
    tamper_admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id, _ = await seed_chain(tamper_admin_sessions, CHAIN_LENGTH)

    report = await _verify(tamper_admin_sessions, tenant_id)

    assert report.ok
    assert (report.row_count, report.tenants[0].head_seq) == (CHAIN_LENGTH, CHAIN_LENGTH)


# One row changed or removed in place: (the attacker's SQL, the row it targets, where the
# verifier must locate the break, what it must call it, a phrase its detail must contain).
_IN_PLACE_TAMPERING = {
    "changed action": (
        "UPDATE audit_logs SET action = 'document.view' WHERE id = %s",
        2,
        (3, 2),
        ChainProblem.ROW_HASH_MISMATCH,
        None,
    ),
    "changed metadata value": (
        "UPDATE audit_logs SET metadata = jsonb_set(metadata, '{request_id}', '\"req-x\"')"
        " WHERE id = %s",
        1,
        (2, 1),
        ChainProblem.ROW_HASH_MISMATCH,
        None,
    ),
    "deleted middle row": (
        "DELETE FROM audit_logs WHERE id = %s",
        2,
        (4, 3),
        ChainProblem.GAP,
        "sequence 3 are missing",
    ),
}


@pytest.mark.parametrize("tampering", list(_IN_PLACE_TAMPERING), ids=str)
async def test_a_row_changed_or_removed_in_place_is_located(
    tamper_migrated_db: MigratedDatabase,
    tamper_admin_sessions: async_sessionmaker[AsyncSession],
    tampering: str,
) -> None:
    statement, target, (seq, broken_row), problem, detail = _IN_PLACE_TAMPERING[tampering]
    tenant_id, rows = await seed_chain(tamper_admin_sessions, CHAIN_LENGTH)
    with attacker(tamper_migrated_db.superuser_url) as conn:
        conn.execute(statement, (rows[target],))

    report = await _verify(tamper_admin_sessions, tenant_id)

    _assert_broken_at(report, tenant_id, seq, rows[broken_row], problem)
    if detail is not None:
        assert report.first_break is not None
        assert detail in report.first_break.detail


async def test_two_rows_with_swapped_contents_are_located(
    tamper_migrated_db: MigratedDatabase, tamper_admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id, rows = await seed_chain(tamper_admin_sessions, CHAIN_LENGTH)
    with attacker(tamper_migrated_db.superuser_url) as conn:
        conn.execute(
            "UPDATE audit_logs AS target SET action = source.action,"
            " resource_id = source.resource_id, metadata = source.metadata,"
            " created_at = source.created_at"
            " FROM audit_logs AS source"
            " WHERE (target.id, source.id) IN ((%(a)s, %(b)s), (%(b)s, %(a)s))",
            {"a": rows[1], "b": rows[2]},
        )

    report = await _verify(tamper_admin_sessions, tenant_id)

    _assert_broken_at(report, tenant_id, 2, rows[1], ChainProblem.ROW_HASH_MISMATCH)


async def test_two_rows_swapped_in_order_are_located(
    tamper_migrated_db: MigratedDatabase, tamper_admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id, rows = await seed_chain(tamper_admin_sessions, CHAIN_LENGTH)
    with attacker(tamper_migrated_db.superuser_url) as conn:
        # Whole rows (hashes included) trade places: rows 2 and 3 now appear as 3 and 2.
        for row_id, seq in ((rows[1], -1), (rows[2], 2), (rows[1], 3)):
            conn.execute("UPDATE audit_logs SET chain_seq = %s WHERE id = %s", (seq, row_id))

    report = await _verify(tamper_admin_sessions, tenant_id)

    _assert_broken_at(report, tenant_id, 2, rows[2], ChainProblem.PREV_HASH_MISMATCH)


async def test_row_inserted_with_a_forged_hash_is_located(
    tamper_migrated_db: MigratedDatabase, tamper_admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id, _ = await seed_chain(tamper_admin_sessions, CHAIN_LENGTH)
    forged_id = uuid.uuid4()
    with attacker(tamper_migrated_db.superuser_url) as conn:
        conn.execute(
            "INSERT INTO audit_logs (id, tenant_id, action, resource_type, chain_seq, prev_hash,"
            " row_hash) SELECT %s, tenant_id, 'document.delete', 'document', chain_seq + 1,"
            " row_hash, sha256('looks like a hash'::bytea) FROM audit_logs"
            " WHERE tenant_id = %s AND chain_seq = %s",
            (forged_id, tenant_id, CHAIN_LENGTH),
        )

    report = await _verify(tamper_admin_sessions, tenant_id)

    _assert_broken_at(
        report, tenant_id, CHAIN_LENGTH + 1, forged_id, ChainProblem.ROW_HASH_MISMATCH
    )


async def test_truncated_tail_is_detected_by_the_chain_head(
    tamper_migrated_db: MigratedDatabase, tamper_admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id, _ = await seed_chain(tamper_admin_sessions, CHAIN_LENGTH)
    with attacker(tamper_migrated_db.superuser_url) as conn:
        conn.execute("DELETE FROM audit_logs WHERE tenant_id = %s AND chain_seq > 3", (tenant_id,))

    report = await _verify(tamper_admin_sessions, tenant_id)

    _assert_broken_at(report, tenant_id, CHAIN_LENGTH, None, ChainProblem.HEAD_MISMATCH)
    assert report.first_break is not None
    assert "truncated" in report.first_break.detail


async def test_truncated_tail_with_a_fixed_head_is_detected_against_an_anchor(
    tamper_migrated_db: MigratedDatabase, tamper_admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id, _ = await seed_chain(tamper_admin_sessions, CHAIN_LENGTH)
    anchor = await _anchor(tamper_admin_sessions, tenant_id)
    with attacker(tamper_migrated_db.superuser_url) as conn:
        conn.execute("DELETE FROM audit_logs WHERE tenant_id = %s AND chain_seq > 3", (tenant_id,))
        conn.execute(
            "UPDATE audit_chain_heads SET last_seq = 3, last_hash = entry.row_hash"
            " FROM audit_logs entry WHERE entry.tenant_id = %(t)s AND entry.chain_seq = 3"
            " AND audit_chain_heads.tenant_id = %(t)s",
            {"t": tenant_id},
        )

    without_anchor = await _verify(tamper_admin_sessions, tenant_id)
    with_anchor = await _verify(tamper_admin_sessions, tenant_id, anchor)

    # A careful attacker leaves a consistent chain: only the anchor tells.
    assert without_anchor.ok
    _assert_broken_at(with_anchor, tenant_id, CHAIN_LENGTH, None, ChainProblem.ANCHOR_MISMATCH)
    assert with_anchor.first_break is not None
    assert "truncated" in with_anchor.first_break.detail


async def test_wholesale_rewrite_is_detected_only_against_an_anchor(
    tamper_migrated_db: MigratedDatabase, tamper_admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id, rows = await seed_chain(tamper_admin_sessions, CHAIN_LENGTH)
    anchor = await _anchor(tamper_admin_sessions, tenant_id)
    with attacker(tamper_migrated_db.superuser_url) as conn:
        # The attacker knows the (public) encoding: change row 2 and recompute every later link.
        conn.execute("UPDATE audit_logs SET action = 'document.view' WHERE id = %s", (rows[1],))
        for seq in range(2, CHAIN_LENGTH + 1):
            conn.execute(
                "UPDATE audit_logs entry SET prev_hash = previous.row_hash"
                " FROM audit_logs previous WHERE entry.tenant_id = %(t)s"
                " AND previous.tenant_id = %(t)s AND entry.chain_seq = %(s)s"
                " AND previous.chain_seq = %(s)s - 1",
                {"t": tenant_id, "s": seq},
            )
            conn.execute(
                "UPDATE audit_logs entry SET row_hash = audit_log_row_hash(entry)"
                " WHERE tenant_id = %s AND chain_seq = %s",
                (tenant_id, seq),
            )
        conn.execute(
            "UPDATE audit_chain_heads SET last_hash = entry.row_hash FROM audit_logs entry"
            " WHERE entry.tenant_id = %(t)s AND entry.chain_seq = %(s)s"
            " AND audit_chain_heads.tenant_id = %(t)s",
            {"t": tenant_id, "s": CHAIN_LENGTH},
        )

    without_anchor = await _verify(tamper_admin_sessions, tenant_id)
    with_anchor = await _verify(tamper_admin_sessions, tenant_id, anchor)

    assert without_anchor.ok  # the documented limit: a consistent rewrite needs an anchor
    _assert_broken_at(with_anchor, tenant_id, CHAIN_LENGTH, rows[-1], ChainProblem.ANCHOR_MISMATCH)
    assert with_anchor.first_break is not None
    assert "rewritten" in with_anchor.first_break.detail


async def test_forged_anchor_is_rejected(
    tamper_admin_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant_id, _ = await seed_chain(tamper_admin_sessions, 2)
    key, _ = new_signing_key()
    signed = audit_anchor_service.sign_anchor(
        audit_anchor_service.anchor_from_verification(
            await _verify(tamper_admin_sessions, tenant_id)
        ),
        key,
    )
    document = json.loads(signed.model_dump_json())

    # Whoever holds the database lowers the anchored head to hide a truncation...
    document["anchor"]["heads"][0]["chain_seq"] = 1
    with pytest.raises(audit_anchor_service.AnchorError, match="does not verify"):
        audit_anchor_service.open_anchor(json.dumps(document), key.public_key())
    # ...or signs a new anchor with a key of their own.
    other_key, _ = new_signing_key()
    forged = audit_anchor_service.sign_anchor(signed.anchor, other_key)
    with pytest.raises(audit_anchor_service.AnchorError, match="does not verify"):
        audit_anchor_service.open_anchor(forged.model_dump_json(), key.public_key())
    document["signature"] = base64.b64encode(b"\x00" * 64).decode()
    with pytest.raises(audit_anchor_service.AnchorError, match="does not verify"):
        audit_anchor_service.open_anchor(json.dumps(document), key.public_key())
    with pytest.raises(audit_anchor_service.AnchorError, match="not valid JSON"):
        audit_anchor_service.open_anchor("{not json", key.public_key())
    # The genuine one opens.
    opened = audit_anchor_service.open_anchor(signed.model_dump_json(), key.public_key())
    assert opened == signed.anchor


async def test_a_broken_chain_is_not_anchored(
    tamper_migrated_db: MigratedDatabase, tamper_admin_sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id, rows = await seed_chain(tamper_admin_sessions, 2)
    with attacker(tamper_migrated_db.superuser_url) as conn:
        conn.execute("UPDATE audit_logs SET action = 'x' WHERE id = %s", (rows[0],))

    with pytest.raises(audit_anchor_service.AnchorError, match="broken"):
        audit_anchor_service.anchor_from_verification(
            await _verify(tamper_admin_sessions, tenant_id)
        )
