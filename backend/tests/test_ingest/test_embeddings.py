"""The local embedder: the numpy forward pass matches sentence-transformers on torch, and the
384 -> 1024 map keeps every cosine distance."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from app.ingest.chunking import split
from app.ingest.embeddings import EMBEDDING_DIMENSIONS, LocalEmbedder, isometry
from app.ingest.minilm import shared_model

REFERENCE = json.loads((Path(__file__).parent / "minilm_reference.json").read_text())


def test_numpy_minilm_matches_the_torch_reference() -> None:
    ours = shared_model().embed(REFERENCE["texts"])
    reference = np.array(REFERENCE["vectors"])
    # Measured once against the full vectors: max abs difference 1.6e-7 (float32 rounding).
    assert np.abs(ours[:, : reference.shape[1]] - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_the_map_into_1024_dimensions_keeps_cosine_distances() -> None:
    matrix = isometry()
    assert matrix.shape == (EMBEDDING_DIMENSIONS, 384)
    assert np.abs(matrix.T @ matrix - np.eye(384)).max() < 1e-12
    texts = ["chest pain radiating to the arm", "a heart attack", "broken wrist in a cast"]
    native = shared_model().embed(texts).astype(np.float64)
    mapped = np.array(LocalEmbedder().embed_sync(texts))
    assert mapped.shape == (3, EMBEDDING_DIMENSIONS)
    assert np.abs(native @ native.T - mapped @ mapped.T).max() < 1e-6
    # The map is a fixed function of its seed: the same vectors every time.
    assert np.array_equal(isometry.__wrapped__(), matrix)


def test_chunks_overlap_and_are_bounded() -> None:
    text = " ".join(f"Sentence number {i} about the patient's care." for i in range(400))
    chunks, cut = split(text, 500, 100, 1000)
    assert not cut
    assert len(chunks) > 10
    for before, after in itertools.pairwise(chunks):
        assert after.start < before.end  # overlap
        assert before.end - before.start <= 500
    assert chunks[-1].end == len(text)
    limited, cut = split(text, 500, 100, 3)
    assert cut
    assert len(limited) == 3
