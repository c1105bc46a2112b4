"""Traces of the AWS clients (issue 21): an S3 call through aiobotocore makes a client span, and
what leaves the process names the API called, never the object key."""

from __future__ import annotations

import json
import uuid

from app.content.object_store import S3ObjectStore
from app.core.config import Settings
from app.core.tracing import configure_tracing
from testkit.tracing import CapturedSpans


async def test_s3_calls_are_traced_without_the_object_key(
    settings: Settings, object_store: S3ObjectStore
) -> None:
    captured = CapturedSpans()
    assert configure_tracing(settings, captured) is not None  # instruments aiobotocore once
    key = f"patients/jane-doe-{uuid.uuid4().hex}.pdf"
    try:
        assert await object_store.head(key) is None
    finally:
        captured.close()
    spans = [
        s for s in captured.exporter.get_finished_spans() if (s.attributes or {}).get("rpc.service")
    ]
    assert [(s.attributes or {}).get("rpc.method") for s in spans] == ["HeadObject"]
    exported = json.dumps([dict(s.attributes or {}) for s in spans] + [s.name for s in spans])
    assert "jane-doe" not in exported
