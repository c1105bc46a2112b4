"""Document content columns: where the encrypted object is, its wrapped data key, its digest;
`tenants.kms_key_arn` described as what it now holds.

Issue 17: the platform now stores each document's bytes itself, encrypted under a fresh data
key wrapped by the tenant's own key (docs/ENCRYPTION.md). The columns are NULL until the
content is uploaded, and then all set together (a check says so; the key version stays NULL
for a key manager that does not expose one). The runtime role writes them on upload and on
key rotation.

Revision ID: 3f9c2a7d5e14
Revises: 8b61c0d4e2f5
Create Date: 2026-11-30 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "3f9c2a7d5e14"
down_revision: str | None = "8b61c0d4e2f5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONTENT_COLUMNS = (
    "content_object_key, content_wrapped_key, content_key_ref, content_key_version, "
    "content_sha256, content_uploaded_at"
)


KMS_KEY_COMMENT = "The tenant's own key: an AWS KMS key ARN or an OpenBao transit key name."
OLD_KMS_KEY_COMMENT = "AWS KMS key ARN for per-tenant encryption (Feature 4)."


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Tenants now get their key when created (create-tenant); it may live in OpenBao too.
    op.alter_column(
        "tenants",
        "kms_key_arn",
        existing_type=sa.String(2048),
        comment=KMS_KEY_COMMENT,
        existing_comment=OLD_KMS_KEY_COMMENT,
    )
    op.add_column(
        "documents",
        sa.Column(
            "content_object_key",
            sa.String(1024),
            nullable=True,
            comment="Key of the encrypted content in the platform's bucket; NULL until uploaded.",
        ),
    )
    op.add_column(
        "documents",
        sa.Column(
            "content_wrapped_key",
            sa.LargeBinary(),
            nullable=True,
            comment="The content's data key, wrapped by the tenant key (never the plain key).",
        ),
    )
    op.add_column(
        "documents",
        sa.Column(
            "content_key_ref",
            sa.String(2048),
            nullable=True,
            comment="The tenant key that wrapped the data key (tenants.kms_key_arn then).",
        ),
    )
    op.add_column(
        "documents",
        sa.Column(
            "content_key_version",
            sa.Integer(),
            nullable=True,
            comment="Version of the tenant key that wrapped it (NULL when the KMS hides it).",
        ),
    )
    op.add_column(
        "documents",
        sa.Column(
            "content_sha256",
            sa.String(64),
            nullable=True,
            comment="SHA-256 of the plaintext content, lowercase hex (also the ETag).",
        ),
    )
    op.add_column(
        "documents",
        sa.Column(
            "content_uploaded_at",
            postgresql.TIMESTAMP(timezone=True),
            nullable=True,
            comment="When the content was stored (Last-Modified of a download).",
        ),
    )
    op.create_check_constraint(
        op.f("ck_documents_content_all_or_none"),
        "documents",
        "num_nulls(content_object_key, content_wrapped_key, content_key_ref, content_sha256,"
        " content_uploaded_at) IN (0, 5)",
    )
    op.create_check_constraint(
        op.f("ck_documents_content_sha256_hex"), "documents", "content_sha256 ~ '^[0-9a-f]{64}$'"
    )
    # One object per document; the orphan sweep looks objects up by key.
    op.create_index(
        "uq_documents_tenant_content_object_key",
        "documents",
        ["tenant_id", "content_object_key"],
        unique=True,
        postgresql_where=sa.text("content_object_key IS NOT NULL"),
    )
    # INSERT too: the ORM names every column without a default in an INSERT (as NULL); UPDATE
    # is what an upload and a key rotation write.
    op.execute(
        f"GRANT INSERT ({CONTENT_COLUMNS}), UPDATE ({CONTENT_COLUMNS}) ON documents TO app_runtime"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        f"REVOKE INSERT ({CONTENT_COLUMNS}), UPDATE ({CONTENT_COLUMNS})"
        " ON documents FROM app_runtime"
    )
    op.drop_index("uq_documents_tenant_content_object_key", table_name="documents")
    op.drop_constraint(op.f("ck_documents_content_sha256_hex"), "documents", type_="check")
    op.drop_constraint(op.f("ck_documents_content_all_or_none"), "documents", type_="check")
    for column in CONTENT_COLUMNS.split(", "):
        op.drop_column("documents", column)
    op.alter_column(
        "tenants",
        "kms_key_arn",
        existing_type=sa.String(2048),
        comment=OLD_KMS_KEY_COMMENT,
        existing_comment=KMS_KEY_COMMENT,
    )
