"""Embeddings behind one interface: the local MiniLM (default) and Bedrock Titan V2 (production).

Every chunk and every text query is embedded by the process's one `Embedder`; the vectors it
returns always have EMBEDDING_DIMENSIONS (1024) coordinates, the width of the `embedding`
columns. Each stored embedding records `provider`, `model` and `dimensions` (the model's own
width), so a corpus can be found and re-embedded when the model changes: vectors of two models
are not comparable.

The local model's 384 dimensions are mapped into 1024 by a fixed matrix with orthonormal
columns (`ISOMETRY`): lengths and angles are preserved exactly (up to float rounding), so cosine
distances are the model's own (tests/test_ingest/test_embeddings.py).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from app.core.config import EmbeddingProvider, Settings

EMBEDDING_DIMENSIONS = 1024
# The matrix is a function of this seed only: changing it changes every local vector, so it is
# part of the recorded model name.
ISOMETRY_SEED = 19
LOCAL_MODEL = f"sentence-transformers/all-MiniLM-L6-v2+orthonormal-1024-seed{ISOMETRY_SEED}"
BEDROCK_CONCURRENCY = 8


class EmbeddingError(RuntimeError):
    """Base of the errors an embedder raises."""


class EmbeddingUnavailableError(EmbeddingError):
    """The embedding service did not answer or refused us; callers answer 503 or retry."""


class Embedder(Protocol):
    """Turns texts into 1024-dimensional unit vectors."""

    provider: str
    model: str
    native_dimensions: int

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector of EMBEDDING_DIMENSIONS floats per text, in order."""
        ...

    async def close(self) -> None:
        """Release clients (nothing for the local model)."""
        ...


@cache
def isometry(native: int = 384, target: int = EMBEDDING_DIMENSIONS) -> npt.NDArray[np.float64]:
    """A fixed target x native matrix with orthonormal columns (Q of a seeded Gaussian's QR).

    Signs are made canonical (R's diagonal positive), so the matrix does not depend on the
    LAPACK build's sign convention.
    """
    gaussian = np.random.default_rng(ISOMETRY_SEED).standard_normal((target, native))
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return np.asarray(q * signs, dtype=np.float64)


@dataclass
class LocalEmbedder:
    """all-MiniLM-L6-v2 (app.ingest.minilm) in a worker thread, mapped to 1024 dimensions."""

    provider: str = EmbeddingProvider.LOCAL.value
    model: str = LOCAL_MODEL
    native_dimensions: int = 384

    def embed_sync(self, texts: list[str]) -> list[list[float]]:
        """The vectors, computed in this thread (CPU-bound: call through `embed`)."""
        from app.ingest.minilm import shared_model

        if not texts:
            return []
        native = shared_model().embed(texts).astype(np.float64)
        mapped = native @ isometry(self.native_dimensions).T
        return [[float(x) for x in row] for row in mapped]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """The vectors, computed off the event loop."""
        return await asyncio.to_thread(self.embed_sync, texts)

    async def close(self) -> None:
        """Nothing to release."""


class BedrockEmbedder:
    """Amazon Titan Text Embeddings V2 through bedrock-runtime InvokeModel (1024, normalised).

    Not reachable from the test environment (no AWS here): it is one documented API call per
    text (https://docs.aws.amazon.com/bedrock/latest/userguide/titan-embedding-models.html);
    the pipeline's tests run the local model through the same interface.
    """

    provider = EmbeddingProvider.BEDROCK.value
    native_dimensions = EMBEDDING_DIMENSIONS

    def __init__(self, client: Any, stack: AsyncExitStack, model: str) -> None:
        self._client = client
        self._stack = stack
        self.model = model
        self._limit = asyncio.Semaphore(BEDROCK_CONCURRENCY)

    @classmethod
    async def open(cls, settings: Settings) -> BedrockEmbedder:
        """Create the client (credentials: the AWS_* settings, else the default chain)."""
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        def secret(value: Any) -> str | None:
            return None if value is None else str(value.get_secret_value())

        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "bedrock-runtime",
                region_name=settings.AWS_REGION,
                aws_access_key_id=secret(settings.AWS_ACCESS_KEY_ID),
                aws_secret_access_key=secret(settings.AWS_SECRET_ACCESS_KEY),
                config=AioConfig(connect_timeout=3, read_timeout=30, retries={"mode": "standard"}),
            )
        )
        return cls(client, stack, settings.BEDROCK_EMBEDDING_MODEL_ID)

    async def _one(self, text: str) -> list[float]:
        from botocore.exceptions import BotoCoreError, ClientError

        body = {"inputText": text, "dimensions": EMBEDDING_DIMENSIONS, "normalize": True}
        async with self._limit:
            try:
                answer = await self._client.invoke_model(
                    modelId=self.model,
                    body=json.dumps(body),
                    contentType="application/json",
                    accept="application/json",
                )
                payload = json.loads(await answer["body"].read())
            except (ClientError, BotoCoreError) as exc:
                raise EmbeddingUnavailableError(f"Bedrock: {type(exc).__name__}") from exc
        vector = [float(x) for x in payload["embedding"]]
        if len(vector) != EMBEDDING_DIMENSIONS:
            raise EmbeddingError(f"Bedrock returned {len(vector)} dimensions")
        return vector

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One InvokeModel per text (Titan V2 takes one input), BEDROCK_CONCURRENCY at a time."""
        return list(await asyncio.gather(*(self._one(text) for text in texts)))

    async def close(self) -> None:
        """Close the client's connections."""
        await self._stack.aclose()


async def open_embedder(settings: Settings) -> Embedder:
    """The embedder EMBEDDING_PROVIDER names."""
    if settings.EMBEDDING_PROVIDER is EmbeddingProvider.BEDROCK:
        return await BedrockEmbedder.open(settings)
    return LocalEmbedder()


class EmbedderHolder:
    """The process's embedder, opened on first use (a process that never embeds loads nothing)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._embedder: Embedder | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Embedder:
        """The embedder EMBEDDING_PROVIDER names, opened once."""
        async with self._lock:
            if self._embedder is None:
                self._embedder = await open_embedder(self._settings)
            return self._embedder

    async def close(self) -> None:
        """Close it if it was opened."""
        if self._embedder is not None:
            await self._embedder.close()
