"""What the audit-chain verifier reports, and the signed anchor `audit-anchor` exports."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class ChainProblem(StrEnum):
    """How a tenant's chain is broken at the reported link."""

    ROW_HASH_MISMATCH = "row_hash_mismatch"
    """The row's contents are not what was hashed when it was written (changed or forged)."""
    PREV_HASH_MISMATCH = "prev_hash_mismatch"
    """The row does not link to the row before it (rows removed, inserted or reordered)."""
    GAP = "gap"
    """Sequence numbers are missing (rows deleted)."""
    OUT_OF_ORDER = "out_of_order"
    """A sequence number repeats or goes backwards."""
    HEAD_MISMATCH = "head_mismatch"
    """The chain's end disagrees with the recorded chain head (tail removed or head edited)."""
    ANCHOR_MISMATCH = "anchor_mismatch"
    """The chain no longer contains the head a signed anchor recorded (truncated or rewritten)."""


class ChainBreak(BaseModel):
    """The first broken link of one tenant's chain."""

    tenant_id: uuid.UUID
    chain_seq: int = Field(description="Sequence number at which the chain breaks.")
    row_id: uuid.UUID | None = Field(description="Audit row at that position, if there is one.")
    problem: ChainProblem
    detail: str = Field(description="What differs, in words.")


class TenantChainStatus(BaseModel):
    """One tenant's chain: OK with its length and head, or its first broken link."""

    tenant_id: uuid.UUID
    ok: bool
    row_count: int
    head_seq: int | None = Field(description="chain_seq of the newest row (None: no rows).")
    head_hash: str | None = Field(description="row_hash of the newest row, hex.")
    head_created_at: datetime | None = None
    first_break: ChainBreak | None = None


class AuditChainVerification(BaseModel):
    """The verifier's report over every tenant in scope."""

    ok: bool
    tenant_count: int
    row_count: int
    heads_checked: bool = Field(
        description="Whether the chain ends were compared with the chain-head table "
        "(only the provisioning role may read it)."
    )
    anchor_checked: bool
    tenants: list[TenantChainStatus]
    first_break: ChainBreak | None = Field(
        default=None, description="The first broken link found (tenants in id order)."
    )


class AnchorHead(BaseModel):
    """One tenant's chain head at anchoring time."""

    tenant_id: uuid.UUID
    chain_seq: int
    row_hash: str = Field(description="Hex SHA-256.", pattern=r"^[0-9a-f]{64}$")
    created_at: datetime = Field(description="created_at of the head row.")


class AuditAnchor(BaseModel):
    """Every tenant's chain head at one moment: what `audit-anchor` signs."""

    format: Literal["tenant-docs.audit-anchor.v1"] = "tenant-docs.audit-anchor.v1"
    anchored_at: datetime
    heads: list[AnchorHead]


class SignedAuditAnchor(BaseModel):
    """An anchor with its Ed25519 signature over the anchor's canonical JSON."""

    anchor: AuditAnchor
    algorithm: Literal["Ed25519"] = "Ed25519"
    key_fingerprint: str = Field(
        description="SHA-256 of the raw public key, hex: names the key, proves nothing."
    )
    signature: str = Field(description="Base64 Ed25519 signature.")
