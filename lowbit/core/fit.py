"""Will a model fit in memory? An estimate from the file, checked against the machine.

Memory needed to run a GGUF model at a context length:

- weights: the bytes of every tensor the model uses, exact from the tensor types and
  shapes (they are memory-mapped and become resident as the forward pass reads them);
- KV cache: 2 (K and V) x layers x context x KV heads x head size x bytes per value of
  the cache type (F16: 2; Q8_0: 34 bytes per block of 32 values);
- scratch: the activation buffers the C library allocates next to the cache, computed
  as ``lb_model_ready`` sizes them (a test checks the sum against the library's own count);
- the runtime's own overhead: the tokenizer and metadata as Python objects, the thread
  pool, the chat template engine. It was measured, not guessed: in a fresh process,
  resident memory (psutil RSS) after loading the model and running a forward pass over
  the whole context, minus the RSS before loading, minus weights, KV cache and scratch.
  A tiny model (288-entry vocabulary) gave 13.2 MiB at contexts 512 and 2048;
  SmolLM2-135M-Instruct (49152 tokens, 48900 merges) gave 44.1 MiB at context 512. The
  overhead is modelled as a fixed part plus a part per vocabulary entry (token or merge),
  fitted to those two models: 13.2 MiB + 331 bytes per entry.

The estimate is compared with ``psutil.virtual_memory().available``: the model *fits*
below 80% of it, is *tight* up to 100%, and *will not fit* above. Memory-mapped weights
can be evicted and read again, so a "will not fit" model may still start, but it would
read its weights from disk for every token.

``python -m lowbit.core.fit MODEL.gguf N_CTX`` repeats the measurement for one model
and context and prints the numbers as JSON.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .gguf_file import GGUFFile, open_gguf

MIB = 2**20
# (bytes per block, values per block) of the KV cache types.
KV_CACHE_TYPES: dict[str, tuple[int, int]] = {"f16": (2, 1), "q8_0": (34, 32)}
OVERHEAD_FIXED_BYTES = round(13.2 * MIB)
OVERHEAD_BYTES_PER_VOCAB_ENTRY = 331
FITS_BELOW = 0.8  # of the available memory

# GGML type ids of the activation encodings the kernels pair with each weight type
# (the traits table's vec_dot_type): bytes per block and values per block.
_ACT_ENCODING: dict[int, tuple[int, int]] = {
    0: (4, 1), 1: (4, 1), 30: (4, 1),  # F32, F16, BF16 -> F32
    2: (34, 32), 6: (34, 32), 8: (34, 32), 20: (34, 32),  # Q4_0, Q5_0, Q8_0, IQ4_NL -> Q8_0
    3: (36, 32), 7: (36, 32),  # Q4_1, Q5_1 -> Q8_1
    10: (292, 256), 11: (292, 256), 12: (292, 256), 13: (292, 256), 14: (292, 256),  # K-quants -> Q8_K
}  # fmt: skip


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to run a model at a context length."""

    weights_bytes: int
    kv_bytes: int
    scratch_bytes: int
    overhead_bytes: int
    n_ctx: int
    cache_type: str

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.scratch_bytes + self.overhead_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "total_bytes": self.total_bytes}


@dataclass(frozen=True)
class FitResult:
    """The estimate against the memory available now."""

    estimate: MemoryEstimate
    available_bytes: int
    verdict: str  # "fits", "tight" or "will not fit"

    @property
    def ratio(self) -> float:
        return self.estimate.total_bytes / max(1, self.available_bytes)

    @property
    def message(self) -> str:
        need = self.estimate.total_bytes / MIB
        have = self.available_bytes / MIB
        detail = f"needs about {need:,.0f} MiB of the {have:,.0f} MiB available"
        if self.verdict == "fits":
            return f"Fits: {detail}."
        if self.verdict == "tight":
            return f"Tight: {detail}; close other programs or choose a shorter context."
        return f"Will not fit: {detail}. Choose a shorter context, a smaller quantization or a smaller model."

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "available_bytes": self.available_bytes,
            "ratio": round(self.ratio, 4),
            "message": self.message,
            "estimate": self.estimate.to_dict(),
        }


def kv_bytes_per_value(cache_type: str) -> float:
    """Bytes per cached value: 2 for "f16", 34/32 for "q8_0".

    Raises:
        ValueError: An unknown cache type.
    """
    try:
        block, values = KV_CACHE_TYPES[cache_type.lower()]
    except KeyError:
        raise ValueError(f"unknown KV cache type {cache_type!r}; use {', '.join(KV_CACHE_TYPES)}") from None
    return block / values


def kv_cache_bytes(hp: Any, n_ctx: int, cache_type: str = "f16") -> int:
    """Bytes of the K and V caches of a model (``HParams``) at a context length."""
    kv_bytes_per_value(cache_type)  # checks the name
    block, values = KV_CACHE_TYPES[cache_type.lower()]
    kv_dim = hp.n_head_kv * hp.head_dim
    row = math.ceil(kv_dim / values) * block  # one position of one layer
    return 2 * hp.n_layer * n_ctx * row


def _used_tensors(gf: GGUFFile) -> list[Any]:
    from .model import _LAYER_RE, _ROLES_GLOBAL, _ROLES_LAYER

    used = []
    for name, t in gf.tensors.items():
        m = _LAYER_RE.match(name)
        if (m and m.group(2) in _ROLES_LAYER) or (not m and name in _ROLES_GLOBAL):
            used.append(t)
    return used


def scratch_bytes(gf: GGUFFile, hp: Any, *, n_ctx: int, n_batch: int = 256, n_threads: int) -> int:
    """The C library's activation buffers, as ``lb_model_ready`` allocates them."""
    nb = min(n_batch, n_ctx)
    q_dim = hp.n_head * hp.head_dim
    kv_dim = hp.n_head_kv * hp.head_dim
    floats = nb * (
        hp.n_embd  # x
        + max(hp.n_embd, q_dim)  # xn
        + q_dim  # q
        + 2 * kv_dim  # k, v
        + hp.n_embd  # tmp
        + 2 * hp.n_ff  # gate, up
        + hp.rope_dim  # rope cos/sin
    )
    act = 0  # the largest encoded activation row over the matrices
    matrices = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    names = {t.name for t in _used_tensors(gf)}
    out_name = "output.weight" if "output.weight" in names else "token_embd.weight"
    for t in _used_tensors(gf):
        if t.name == out_name or any(f".{m}.weight" in t.name for m in matrices):
            block, values = _ACT_ENCODING.get(t.type_id, (4, 1))
            act = max(act, math.ceil(t.shape[0] / values) * block)
    att = n_threads * n_ctx
    inv_freq = (hp.rope_dim // 2) * 8
    return 4 * (floats + att) + inv_freq + nb * act


def runtime_overhead_bytes(gf: GGUFFile) -> int:
    """The measured overhead model: fixed part plus a part per vocabulary entry."""
    md = gf.metadata
    entries = len(md.get("tokenizer.ggml.tokens") or ()) + len(md.get("tokenizer.ggml.merges") or ())
    return OVERHEAD_FIXED_BYTES + OVERHEAD_BYTES_PER_VOCAB_ENTRY * entries


def estimate_memory(
    model: str | Path | GGUFFile,
    *,
    n_ctx: int | None = None,
    cache_type: str = "f16",
    n_threads: int | None = None,
    n_batch: int = 256,
) -> MemoryEstimate:
    """Memory needed to run a GGUF model with a full context.

    Args:
        model: The GGUF file, or one opened with :func:`open_gguf`.
        n_ctx: Context length; default as :meth:`Model.load` (training context, at most 4096).
        cache_type: KV cache type, "f16" or "q8_0".
        n_threads: Threads (their attention rows are part of the scratch); default: physical cores.
        n_batch: Tokens per prompt step, as in :meth:`Model.load`.

    Returns:
        The parts of the estimate.

    Raises:
        ModelNotFoundError, ModelFormatError, UnsupportedModelError: As :func:`read_hparams`.
        ValueError: An unknown cache type or a context length below 1.
    """
    from .model import DEFAULT_CONTEXT, default_threads, read_hparams

    kv_bytes_per_value(cache_type)
    gf = model if isinstance(model, GGUFFile) else open_gguf(model)
    hp = read_hparams(gf)
    n_ctx = n_ctx or min(hp.n_ctx_train, DEFAULT_CONTEXT)
    if n_ctx < 1:
        raise ValueError("the context length must be at least 1")
    threads = n_threads or default_threads()
    return MemoryEstimate(
        weights_bytes=sum(t.nbytes for t in _used_tensors(gf)),
        kv_bytes=kv_cache_bytes(hp, n_ctx, cache_type),
        scratch_bytes=scratch_bytes(gf, hp, n_ctx=n_ctx, n_batch=n_batch, n_threads=threads),
        overhead_bytes=runtime_overhead_bytes(gf),
        n_ctx=n_ctx,
        cache_type=cache_type.lower(),
    )


def available_memory() -> int:
    """Bytes of memory available to a new program now (psutil)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_fit(estimate: MemoryEstimate, *, available: int | None = None) -> FitResult:
    """Compare an estimate with the available memory: fits, tight or will not fit."""
    have = available_memory() if available is None else available
    need = estimate.total_bytes
    if need <= FITS_BELOW * have:
        verdict = "fits"
    elif need <= have:
        verdict = "tight"
    else:
        verdict = "will not fit"
    return FitResult(estimate=estimate, available_bytes=have, verdict=verdict)


def compare_measured(estimate: MemoryEstimate, measured_bytes: int) -> float:
    """Relative error of the estimate against a measured resident-memory increase
    (positive: the estimate was too high)."""
    return (estimate.total_bytes - measured_bytes) / max(1, measured_bytes)


def measure_resident(
    path: str | Path, *, n_ctx: int, n_threads: int = 2, timeout: float = 1800
) -> dict[str, Any]:
    """Load a model in a fresh process, fill its context, and report the RSS increase.

    Runs ``python -m lowbit.core.fit`` so that nothing else in this process counts.

    Returns:
        ``rss_increase_bytes``, ``state_bytes`` (the library's own count), ``weights_bytes``,
        ``n_ctx`` and ``seconds``.

    Raises:
        RuntimeError: The measuring process failed.
    """
    cmd = [sys.executable, "-m", "lowbit.core.fit", str(path), str(n_ctx), "--threads", str(n_threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {Path(path).name} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure_here(path: str, n_ctx: int, n_threads: int) -> dict[str, Any]:
    import time

    import psutil

    from .model import Model

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t0 = time.monotonic()
    model = Model.load(path, n_ctx=n_ctx, n_threads=n_threads)
    # The cache is allocated zeroed and becomes resident only where written: fill the
    # whole context so that the measurement includes all of it.
    ids = [1 + (i * 7919) % (model.n_vocab - 1) for i in range(n_ctx)]
    model.forward(ids, 0)
    rss1 = proc.memory_info().rss
    out = {
        "rss_increase_bytes": rss1 - rss0,
        "state_bytes": model.stats().state_bytes,
        "weights_bytes": sum(t.nbytes for t in _used_tensors(model.file)),
        "n_ctx": n_ctx,
        "seconds": round(time.monotonic() - t0, 2),
    }
    model.close()
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Measure a model's resident memory with a full context.")
    ap.add_argument("model")
    ap.add_argument("n_ctx", type=int)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(json.dumps(_measure_here(a.model, a.n_ctx, a.threads)))
