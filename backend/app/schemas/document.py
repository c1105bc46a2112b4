"""Request and response shapes for documents and search."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from app.database.vector_search import EMBEDDING_DIMENSIONS
from app.schemas.common import (
    FILTER_LIMITS_TEXT,
    FILTER_MAX_BYTES,
    Embedding,
    Metadata,
    MetadataFilter,
    RequestModel,
    ResponseModel,
    Text,
)

DocumentStatus = Literal["processing", "completed", "failed"]

_EXAMPLE_METADATA: dict[str, JsonValue] = {
    "patient_ref": "P-1042",
    "department": "cardiology",
    "pages": 12,
}
# A valid 1024-number embedding for the examples ("Try it out" in /docs works as shown).
_EXAMPLE_EMBEDDING: list[JsonValue] = [
    round(0.01 * ((i % 7) - 3), 2) or 0.005 for i in range(EMBEDDING_DIMENSIONS)
]


class DocumentCreate(RequestModel):
    """Register a document already uploaded to S3. Its status starts as `processing`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "filename": "discharge-summary.pdf",
                    "content_type": "application/pdf",
                    "size_bytes": 482113,
                    "s3_bucket": "acme-phi-documents",
                    "s3_key": "2026/11/discharge-1042.pdf",
                    "metadata": _EXAMPLE_METADATA,
                }
            ]
        }
    )

    filename: Text = Field(min_length=1, max_length=255, examples=["discharge-summary.pdf"])
    content_type: Text = Field(min_length=1, max_length=255, examples=["application/pdf"])
    size_bytes: int = Field(ge=0, le=2**63 - 1, examples=[482113])
    s3_bucket: Text = Field(min_length=1, max_length=255, examples=["acme-phi-documents"])
    s3_key: Text = Field(min_length=1, max_length=1024, examples=["2026/11/discharge-1042.pdf"])
    metadata: Metadata = Field(default_factory=dict, examples=[_EXAMPLE_METADATA])
    embedding: Embedding | None = Field(default=None, description="Optional 1024-dim embedding.")


class DocumentUpdate(RequestModel):
    """Change a document's status, metadata or embedding (`embedding: null` removes it)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "completed", "metadata": {**_EXAMPLE_METADATA, "reviewed": True}}
            ]
        }
    )

    status: DocumentStatus | None = Field(default=None, examples=["completed"])
    metadata: Metadata | None = Field(default=None, examples=[_EXAMPLE_METADATA])
    embedding: Embedding | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> DocumentUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to update: give status, metadata or embedding")
        if "status" in self.model_fields_set and self.status is None:
            raise ValueError("status cannot be null")
        if "metadata" in self.model_fields_set and self.metadata is None:
            raise ValueError("metadata cannot be null (send {} to clear it)")
        return self


class Document(ResponseModel):
    """A document as clients see it (the embedding itself is not echoed back)."""

    id: uuid.UUID
    user_id: uuid.UUID
    filename: str
    content_type: str
    size_bytes: int
    s3_bucket: str
    s3_key: str
    status: DocumentStatus
    status_reason: str | None = Field(
        default=None,
        description="Why the status is what it is: a processing failure's reason (unsupported "
        "type, unreadable PDF, attempts used up), no text found, or text cut at a limit.",
    )
    chunk_count: int | None = Field(
        default=None,
        description="Searchable chunks made of the content (0: no text); null until processed.",
    )
    metadata: dict[str, Any] = Field(validation_alias="metadata_")
    has_embedding: bool
    content_sha256: str | None = Field(
        description="SHA-256 of the uploaded content (hex; the download's ETag); null until"
        " `PUT /documents/{id}/content`."
    )
    content_uploaded_at: datetime | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


class DocumentListFilters(BaseModel):
    """GET /documents' filters, declared once as a query-parameter model (FastAPI reads each
    field from the query string, with the usual coercion of query values)."""

    status: DocumentStatus | None = None
    content_type: Text | None = Field(default=None, max_length=255)
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata: str | None = Field(
        default=None,
        # Room for whitespace and \u escapes around a filter of FILTER_MAX_BYTES.
        max_length=4 * FILTER_MAX_BYTES,
        description="JSON object the metadata must contain (JSONB `@>`, GIN-indexed). "
        + FILTER_LIMITS_TEXT,
        examples=['{"department":"cardiology"}'],
    )
    include_deleted: bool = Field(default=False, description="Admins only")


class DocumentPage(ResponseModel):
    """One page of documents, newest first; pass `next_cursor` back to get the next page."""

    items: list[Document]
    next_cursor: str | None = Field(description="Opaque; null on the last page.")


class SearchFilters(RequestModel):
    """Optional restrictions for a search."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "completed", "metadata": {"department": "cardiology"}}]
        }
    )

    status: DocumentStatus | None = None
    content_type: Text | None = Field(default=None, min_length=1, max_length=255)
    metadata: MetadataFilter | None = Field(
        default=None,
        description="Only documents whose metadata contains this JSON object. "
        + FILTER_LIMITS_TEXT,
    )


# A question, not a document: longer texts belong in an upload.
QUERY_MAX_CHARS = 1000


class SearchRequest(RequestModel):
    """Nearest-neighbour search over the caller's tenant's active documents."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "embedding": _EXAMPLE_EMBEDDING,
                    "k": 5,
                    "filters": {"metadata": {"department": "cardiology"}},
                }
            ]
        }
    )

    embedding: Embedding | None = Field(
        default=None, description="A 1024-number query vector (or send `query` instead)."
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=QUERY_MAX_CHARS,
        description="A question or phrase: embedded server-side, matched against the chunks of"
        " the documents' content; each hit carries its best chunk's text as `snippet`. `filters`"
        " apply as to an embedding search (a chunk counts when its document passes them).",
    )
    k: int = Field(default=10, ge=1, le=100)
    filters: SearchFilters | None = None

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.embedding is None) == (self.query is None):
            raise ValueError("send exactly one of `query` (text) and `embedding` (a vector)")
        if self.query is not None and not self.query.strip():
            raise ValueError("`query` must contain some text")
        return self


class SearchHit(ResponseModel):
    """A document and its cosine distance to the query (0 = same direction, 2 = opposite)."""

    document: Document
    distance: float
    snippet: str | None = Field(
        default=None, description="Text search only: the text of the document's nearest chunk."
    )


class SearchResults(ResponseModel):
    """Nearest first; ties ordered by id."""

    items: list[SearchHit]
