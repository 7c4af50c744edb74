"""Activation statistics for calibrated quantization.

The full-precision source model runs on a calibration text in float32 numpy,
one layer at a time over every chunk of the text, so memory holds only the
hidden states (tokens x width) and one layer's weights. For each weight matrix
the mean square of every input channel is accumulated: the importance vector
that weights the quantization error of that column (the diagonal of the
Hessian ``X^T X / n``). GPTQ uses that Hessian in full: on request the Gram
matrix of every input is accumulated too, one per input (shared by the matrices
it feeds), and yielded a layer at a time so that only one layer's matrices are
held.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .convert import SourceModel
from .errors import QuantizeError

CALIBRATION_CTX = 512
MAX_CALIBRATION_TOKENS = 8192

# Which activation feeds which weights (the per-layer kinds of GGUF names).
INPUT_OF = {
    "attn_q.weight": "attn_in",
    "attn_k.weight": "attn_in",
    "attn_v.weight": "attn_in",
    "attn_output.weight": "attn_out",
    "ffn_gate.weight": "ffn_in",
    "ffn_up.weight": "ffn_in",
    "ffn_down.weight": "ffn_act",
}


def builtin_calibration_text() -> str:
    """The calibration text shipped with Lowbit (kept apart from the evaluation text)."""
    return (
        importlib.resources.files("lowbit.resources")
        .joinpath("texts/calibration.txt")
        .read_text(encoding="utf-8")
    )


@dataclass(frozen=True)
class CalibrationText:
    """Tokens of a calibration text and what identifies it (for provenance)."""

    tokens: list[int]
    sha256: str
    source: str  # "builtin" or the file name


def load_calibration(path: str | Path | None, tokenize: Callable[[str], list[int]]) -> CalibrationText:
    """Read and tokenize the calibration text (the built-in one when ``path`` is None).

    Raises:
        QuantizeError: The text is too short to calibrate with.
        OSError: The file cannot be read.
    """
    if path is None:
        text, source = builtin_calibration_text(), "builtin"
    else:
        text, source = Path(path).read_text(encoding="utf-8"), Path(path).name
    tokens = tokenize(text)[:MAX_CALIBRATION_TOKENS]
    if len(tokens) < 64:
        raise QuantizeError(f"the calibration text has {len(tokens)} tokens; at least 64 are needed")
    return CalibrationText(tokens, hashlib.sha256(text.encode("utf-8")).hexdigest(), source)


@dataclass
class LayerInputs:
    """Inputs of one layer's matrices, rows = tokens (kept only while needed)."""

    attn_in: np.ndarray
    attn_out: np.ndarray
    ffn_in: np.ndarray
    ffn_act: np.ndarray


@dataclass
class ActivationStats:
    """Mean squared activation per input channel of every weight matrix (by GGUF name)."""

    importance: dict[str, np.ndarray] = field(default_factory=dict)
    n_tokens: int = 0


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    return (x / np.sqrt(ms + eps)) * w


class CalibrationRunner:
    """Runs the source model layer by layer on the calibration chunks.

    ``hidden`` holds the residual stream of every chunk: (chunks, n_ctx, n_embd).
    """

    def __init__(self, source: SourceModel, tokens: list[int], *, n_ctx: int = CALIBRATION_CTX) -> None:
        md = source.metadata()
        arch = source.arch
        self.source = source
        self.eps = float(md.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5))
        n_embd = int(md[f"{arch}.embedding_length"])
        self.head_dim = int(md.get(f"{arch}.attention.key_length", n_embd // source.n_head))
        self.rope_dim = int(md.get(f"{arch}.rope.dimension_count", self.head_dim))
        theta = float(md.get(f"{arch}.rope.freq_base", 10000.0))
        scale = 1.0
        if str(md.get(f"{arch}.rope.scaling.type", "")) == "linear":
            scale = 1.0 / float(md[f"{arch}.rope.scaling.factor"])
        n_ctx = min(n_ctx, len(tokens))
        n_chunks = len(tokens) // n_ctx
        ids = np.asarray(tokens[: n_chunks * n_ctx], dtype=np.int64).reshape(n_chunks, n_ctx)
        self.n_tokens = int(ids.size)
        emb = source.load("token_embd.weight")
        if int(ids.max()) >= emb.shape[0]:
            raise QuantizeError("the calibration text has token ids outside the model's vocabulary")
        self.hidden = emb[ids]
        del emb
        inv = theta ** (-np.arange(0, self.rope_dim, 2, dtype=np.float64) / self.rope_dim)
        if "rope_freqs.weight" in source.tensors:
            inv = inv / source.load("rope_freqs.weight").astype(np.float64)
        ang = np.arange(n_ctx, dtype=np.float64)[:, None] * scale * inv[None, :]
        self.cos = np.cos(ang).astype(np.float32)
        self.sin = np.sin(ang).astype(np.float32)
        self.neox = arch == "qwen2"
        self.mask = np.triu(np.full((n_ctx, n_ctx), -np.inf, dtype=np.float32), 1)

    def _rope(self, x: np.ndarray) -> np.ndarray:
        # x: (chunks, heads, T, head_dim). GGUF llama rotates adjacent pairs, qwen2 halves.
        d = self.rope_dim
        r, rest = x[..., :d], x[..., d:]
        if self.neox:
            a, b = r[..., : d // 2], r[..., d // 2 :]
            out = np.concatenate([a * self.cos - b * self.sin, a * self.sin + b * self.cos], axis=-1)
        else:
            a, b = r[..., 0::2], r[..., 1::2]
            out = np.empty_like(r)
            out[..., 0::2] = a * self.cos - b * self.sin
            out[..., 1::2] = a * self.sin + b * self.cos
        return np.concatenate([out, rest], axis=-1) if rest.shape[-1] else out

    def layer(self, i: int, weights: Callable[[str], np.ndarray | None]) -> LayerInputs:
        """Run layer ``i`` with the given weights (by kind, e.g. ``attn_q.weight``);
        advance the hidden states and return the inputs each matrix saw."""
        h = self.hidden
        c, t, e = h.shape
        hd, nh, nkv = self.head_dim, self.source.n_head, self.source.n_head_kv

        def lin(x: np.ndarray, kind: str) -> np.ndarray:
            w = weights(f"{kind}.weight")
            y = x @ w.T
            b = weights(f"{kind}.bias")
            return y + b if b is not None else y

        x = _rms_norm(h, weights("attn_norm.weight"), self.eps)
        q = lin(x, "attn_q").reshape(c, t, nh, hd).transpose(0, 2, 1, 3)
        k = lin(x, "attn_k").reshape(c, t, nkv, hd).transpose(0, 2, 1, 3)
        v = lin(x, "attn_v").reshape(c, t, nkv, hd).transpose(0, 2, 1, 3)
        q, k = self._rope(q), self._rope(k)
        group = nh // nkv
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        att = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / math.sqrt(hd)) + self.mask
        att -= att.max(axis=-1, keepdims=True)
        np.exp(att, out=att)
        att /= att.sum(axis=-1, keepdims=True)
        o = (att @ v).transpose(0, 2, 1, 3).reshape(c, t, nh * hd)
        del att, q, k, v
        h = h + o @ weights("attn_output.weight").T
        x2 = _rms_norm(h, weights("ffn_norm.weight"), self.eps)
        g = x2 @ weights("ffn_gate.weight").T
        u = x2 @ weights("ffn_up.weight").T
        a = g / (1.0 + np.exp(-g)) * u
        del g, u
        self.hidden = h + a @ weights("ffn_down.weight").T
        return LayerInputs(x.reshape(-1, e), o.reshape(-1, nh * hd), x2.reshape(-1, e), a.reshape(c * t, -1))

    def final_input(self) -> np.ndarray:
        """The output matrix's input: the final norm of the hidden states."""
        w = self.source.load("output_norm.weight")
        return _rms_norm(self.hidden, w, self.eps).reshape(-1, self.hidden.shape[-1])


def mean_square(x: np.ndarray) -> np.ndarray:
    """Mean squared value of every column (the importance of that input channel)."""
    return np.einsum("ij,ij->j", x, x, dtype=np.float64).astype(np.float32) / max(1, x.shape[0])


@dataclass(frozen=True)
class InputStats:
    """Second moments of one matrix input over the calibration tokens.

    ``mean_square`` is the importance vector (n,) float32; ``gram`` is the Hessian
    ``X^T X / n`` (n, n) float64 when it was asked for, else None.
    """

    mean_square: np.ndarray
    gram: np.ndarray | None = None


def gram_matrix(x: np.ndarray, *, chunk: int = CALIBRATION_CTX) -> np.ndarray:
    """``X^T X / n`` in float64: float32 products over chunks of rows (fast, and
    exact enough over a few hundred rows), summed in float64 so that long texts
    lose nothing."""
    n = x.shape[1]
    acc = np.zeros((n, n), dtype=np.float64)
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk]
        acc += part.T @ part
    acc /= max(1, x.shape[0])
    return acc


def collect_statistics(
    source: SourceModel,
    tokens: list[int],
    *,
    gram: bool = False,
    progress: Callable[[str, float, float | None, str], None] | None = None,
    cancel: object | None = None,
) -> Iterator[tuple[str, InputStats]]:
    """Yield (tensor name, input statistics) for every weight matrix of the source.

    Runs the full-precision model over the calibration tokens layer by layer; the
    matrices of a layer come together, in layer order, and matrices that share an
    input share one ``InputStats``. The output matrix (or the tied token
    embeddings) comes last and never has a Gram matrix. With ``gram`` the Gram
    matrix of every layer input is computed as well.
    """
    runner = CalibrationRunner(source, tokens)
    for i in range(source.n_layer):
        if cancel is not None:
            cancel.raise_if_cancelled()  # type: ignore[attr-defined]
        if progress is not None:
            progress("calibrate", i, source.n_layer + 1, f"layer {i}")

        def weights(kind: str, layer: int = i) -> np.ndarray | None:
            name = f"blk.{layer}.{kind}"
            return source.load(name) if name in source.tensors else None

        inputs = runner.layer(i, weights)
        stats: dict[str, InputStats] = {}
        for which in dict.fromkeys(INPUT_OF.values()):
            x = getattr(inputs, which)
            stats[which] = InputStats(mean_square(x), gram_matrix(x) if gram else None)
        for kind, which in INPUT_OF.items():
            yield f"blk.{i}.{kind}", stats[which]
    final = InputStats(mean_square(runner.final_input()))
    yield ("output.weight" if "output.weight" in source.tensors else "token_embd.weight"), final
    if progress is not None:
        progress("calibrate", source.n_layer + 1, source.n_layer + 1, "done")


def collect_importance(
    source: SourceModel,
    tokens: list[int],
    *,
    progress: Callable[[str, float, float | None, str], None] | None = None,
    cancel: object | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (tensor name, importance vector) for every weight matrix of the source.

    Runs the full-precision model over the calibration tokens layer by layer. The
    output matrix (or the tied token embeddings) comes last.
    """
    for name, stats in collect_statistics(source, tokens, progress=progress, cancel=cancel):
        yield name, stats.mean_square
