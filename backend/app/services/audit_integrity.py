"""Recompute the audit hash chain and report OK or the first broken link of each tenant.

The encoding is specified in docs/AUDIT_INTEGRITY.md and implemented three times on purpose:
in the database (`audit_log_row_hash`, which the insert trigger uses), here, and in the
standalone `scripts/verify_audit_chain.py`. This module never calls the database's hash
function: whoever can replace that function must not be able to make the check agree.

Works in a runtime session with a tenant context (RLS shows one tenant's rows) and in an
admin transaction (all tenants; the chain heads are compared too).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.schemas.audit_integrity import (
    AuditAnchor,
    AuditChainVerification,
    ChainBreak,
    ChainProblem,
    TenantChainStatus,
)

ENCODING_VERSION = "audit_logs.v1"
GENESIS_HASH = bytes(32)
"""prev_hash of every tenant's first row."""

STREAM_BATCH_ROWS = 2000

# Two scopes: every tenant the session can see (the CLI), or one (the API), filtered by a plain
# `tenant_id = :tenant_id` that uses uq_audit_logs_tenant_id_chain_seq and, on Citus, routes
# the query to that tenant's shard (an `:x IS NULL OR` form would reach every shard).
# The canonical fields follow id..created_at, in encoding order, as PostgreSQL renders them
# (docs/AUDIT_INTEGRITY.md).
_ROWS_SQL = """
    SELECT id, tenant_id, chain_seq, prev_hash, row_hash, created_at,
        tenant_id::text AS canonical_tenant_id,
        chain_seq::text AS canonical_chain_seq,
        encode(prev_hash, 'hex') AS canonical_prev_hash,
        id::text AS canonical_id,
        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
            AS canonical_created_at,
        user_id::text AS canonical_user_id,
        action AS canonical_action,
        resource_type AS canonical_resource_type,
        resource_id::text AS canonical_resource_id,
        host(ip_address) || '/' || masklen(ip_address) AS canonical_ip_address,
        user_agent AS canonical_user_agent,
        metadata::text AS canonical_metadata
    FROM audit_logs
    {where}
    ORDER BY tenant_id, chain_seq, id
"""
_ROWS = {
    scoped: text(_ROWS_SQL.format(where=where)).execution_options(yield_per=STREAM_BATCH_ROWS)
    for scoped, where in ((False, ""), (True, "WHERE tenant_id = :tenant_id"))
}
_FIRST_CANONICAL_COLUMN = 6

_CHAIN_HEADS = {
    False: text("SELECT tenant_id, last_seq, last_hash FROM audit_chain_heads"),
    True: text(
        "SELECT tenant_id, last_seq, last_hash FROM audit_chain_heads WHERE tenant_id = :tenant_id"
    ),
}
_CAN_READ_CHAIN_HEADS = text("SELECT has_table_privilege('public.audit_chain_heads', 'SELECT')")
_VISIBLE_TENANTS = text("SELECT id FROM tenants")


def canonical_fields(row: Any) -> list[str | None]:
    """The canonical text fields of a `canonical_rows` row, in encoding order."""
    return list(row[_FIRST_CANONICAL_COLUMN:])


async def canonical_rows(session: AsyncSession, tenant_id: uuid.UUID) -> AsyncIterator[Any]:
    """One tenant's audit rows in chain order, with their canonical fields (streamed)."""
    rows = await session.stream(_ROWS[True], {"tenant_id": tenant_id})
    async for row in rows:
        yield row


def netstring(value: str | None) -> bytes:
    """One field of the encoding: `<byte length>:<UTF-8 bytes>,`, or `-,` for NULL."""
    if value is None:
        return b"-,"
    raw = value.encode("utf-8")
    return str(len(raw)).encode() + b":" + raw + b","


def row_hash(canonical_fields: Sequence[str | None]) -> bytes:
    """SHA-256 of the version tag and the row's canonical fields, each as a netstring."""
    digest = hashlib.sha256(netstring(ENCODING_VERSION))
    for value in canonical_fields:
        digest.update(netstring(value))
    return digest.digest()


@dataclass
class _Expectation:
    """A (sequence number, hash) the chain must contain: the chain head or an anchor's head."""

    seq: int
    hash: bytes
    problem: ChainProblem
    source: str
    seen: bool = False


@dataclass
class _TenantWalk:
    """The state of one tenant's chain while its rows stream past."""

    tenant_id: uuid.UUID
    expectations: list[_Expectation] = field(default_factory=list)
    row_count: int = 0
    next_seq: int = 1
    prev_hash: bytes = GENESIS_HASH
    head_hash: bytes | None = None
    head_created_at: datetime | None = None
    first_break: ChainBreak | None = None

    def _break(
        self, seq: int, row_id: uuid.UUID | None, problem: ChainProblem, detail: str
    ) -> None:
        if self.first_break is None:
            self.first_break = ChainBreak(
                tenant_id=self.tenant_id,
                chain_seq=seq,
                row_id=row_id,
                problem=problem,
                detail=detail,
            )

    def add_row(self, row: Any) -> None:
        """Check one row (rows arrive in chain_seq order)."""
        self.row_count += 1
        seq: int = row.chain_seq
        row_id: uuid.UUID = row.id
        stored_hash = bytes(row.row_hash)
        if self.first_break is None:
            self._check_link(row, seq, row_id, stored_hash)
        for expected in self.expectations:
            if expected.seq == seq and not expected.seen:
                expected.seen = True
                if expected.hash != stored_hash:
                    self._break(
                        seq,
                        row_id,
                        expected.problem,
                        f"{expected.source} recorded hash {expected.hash.hex()} at sequence "
                        f"{seq}, the row has {stored_hash.hex()}: the chain was rewritten",
                    )
        self.next_seq = seq + 1
        self.prev_hash = stored_hash
        self.head_hash = stored_hash
        self.head_created_at = row.created_at

    def _check_link(self, row: Any, seq: int, row_id: uuid.UUID, stored_hash: bytes) -> None:
        if seq < self.next_seq:
            self._break(
                seq,
                row_id,
                ChainProblem.OUT_OF_ORDER,
                f"sequence number {seq} repeats or goes backwards (expected {self.next_seq})",
            )
        elif seq > self.next_seq:
            missing = (
                f"{self.next_seq}" if seq == self.next_seq + 1 else f"{self.next_seq}-{seq - 1}"
            )
            self._break(
                seq, row_id, ChainProblem.GAP, f"rows at sequence {missing} are missing (deleted)"
            )
        elif bytes(row.prev_hash) != self.prev_hash:
            self._break(
                seq,
                row_id,
                ChainProblem.PREV_HASH_MISMATCH,
                f"prev_hash {bytes(row.prev_hash).hex()} is not the hash of the row before "
                f"({self.prev_hash.hex()}): rows were removed, inserted or reordered",
            )
        else:
            computed = row_hash(row[_FIRST_CANONICAL_COLUMN:])
            if computed != stored_hash:
                self._break(
                    seq,
                    row_id,
                    ChainProblem.ROW_HASH_MISMATCH,
                    f"the row's contents hash to {computed.hex()}, not the stored "
                    f"{stored_hash.hex()}: the row was changed or forged",
                )

    def finish(self) -> TenantChainStatus:
        """Check what the chain's end must contain, and report."""
        last_seq = self.next_seq - 1
        for expected in self.expectations:
            if not expected.seen:
                self._break(
                    expected.seq,
                    None,
                    expected.problem,
                    f"the chain ends at sequence {last_seq} but {expected.source} recorded "
                    f"sequence {expected.seq}: the tail was truncated",
                )
        return TenantChainStatus(
            tenant_id=self.tenant_id,
            ok=self.first_break is None,
            row_count=self.row_count,
            head_seq=last_seq if self.row_count else None,
            head_hash=self.head_hash.hex() if self.head_hash is not None else None,
            head_created_at=self.head_created_at,
            first_break=self.first_break,
        )


async def _can_read_chain_heads(session: AsyncSession) -> bool:
    return bool((await session.execute(_CAN_READ_CHAIN_HEADS)).scalar_one())


async def _chain_heads(
    session: AsyncSession, tenant_id: uuid.UUID | None
) -> dict[uuid.UUID, tuple[int, bytes]]:
    result = await session.execute(_CHAIN_HEADS[tenant_id is not None], {"tenant_id": tenant_id})
    return {row.tenant_id: (row.last_seq, bytes(row.last_hash)) for row in result}


async def _tenants_in_scope(session: AsyncSession, tenant_id: uuid.UUID | None) -> set[uuid.UUID]:
    if tenant_id is not None:
        return {tenant_id}
    # Under RLS this is the context's tenant only; as the provisioning role, every tenant.
    result = await session.execute(_VISIBLE_TENANTS)
    return set(result.scalars())


async def verify_chain(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID | None = None,
    anchor: AuditAnchor | None = None,
) -> AuditChainVerification:
    """Recompute every chain in scope (one tenant, or all the session can see) and report.

    With `anchor` (already signature-checked), each anchored head must still be in the chain
    with the same hash, which detects a truncated tail or a rewritten chain.
    """
    walks: dict[uuid.UUID, _TenantWalk] = {}

    def walk_for(tenant: uuid.UUID) -> _TenantWalk:
        if tenant not in walks:
            walks[tenant] = _TenantWalk(tenant)
        return walks[tenant]

    # The heads are read before the rows: rows committed in between only extend the chain
    # past the recorded head, which the checks allow; the other order would not be safe.
    heads_checked = await _can_read_chain_heads(session)
    if heads_checked:
        for head_tenant, (seq, digest) in (await _chain_heads(session, tenant_id)).items():
            walk_for(head_tenant).expectations.append(
                _Expectation(seq, digest, ChainProblem.HEAD_MISMATCH, "the chain head")
            )
    if anchor is not None:
        scope = await _tenants_in_scope(session, tenant_id)
        label = f"the anchor of {anchor.anchored_at.isoformat()}"
        for head in anchor.heads:
            if head.tenant_id in scope:
                walk_for(head.tenant_id).expectations.append(
                    _Expectation(
                        head.chain_seq,
                        bytes.fromhex(head.row_hash),
                        ChainProblem.ANCHOR_MISMATCH,
                        label,
                    )
                )

    rows = await session.stream(_ROWS[tenant_id is not None], {"tenant_id": tenant_id})
    async for row in rows:
        walk_for(row.tenant_id).add_row(row)
    if tenant_id is not None:
        walk_for(tenant_id)

    statuses = [walks[tenant].finish() for tenant in sorted(walks, key=str)]
    first_break = next((s.first_break for s in statuses if s.first_break is not None), None)
    return AuditChainVerification(
        ok=first_break is None,
        tenant_count=len(statuses),
        row_count=sum(s.row_count for s in statuses),
        heads_checked=heads_checked,
        anchor_checked=anchor is not None,
        tenants=statuses,
        first_break=first_break,
    )
