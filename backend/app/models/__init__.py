"""The tables of the data model, one module each.

Every model inherits `Base` (database-generated UUID key, created/updated timestamps);
Tenant, User and Document add `SoftDeleteMixin`; AuditLog is append-only. All four are
tenant-scoped by Row-Level Security in the database (see docs/RLS_PATTERNS.md), and
relationships never load implicitly (`lazy="raise"`): load what you need explicitly.
"""

from app.models.audit_log import AuditLog, ImmutableAuditLogError
from app.models.document import Document
from app.models.document_chunk import DocumentChunk
from app.models.idempotency_key import IdempotencyKey
from app.models.tenant import SYSTEM_TENANT_ID, Tenant
from app.models.user import User

__all__ = [
    "SYSTEM_TENANT_ID",
    "AuditLog",
    "Document",
    "DocumentChunk",
    "IdempotencyKey",
    "ImmutableAuditLogError",
    "Tenant",
    "User",
]
