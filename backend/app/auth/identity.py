"""What a verified token proves (its own module: the verifier and its cache both need it)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class VerifiedIdentity:
    """What a valid token proves: who (the IdP subject) and in which tenant."""

    tenant_id: uuid.UUID
    subject: str
