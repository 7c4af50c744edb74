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

A model not downloaded yet (a Hub repository) is estimated with the same formulas from
the shape in its ``config.json``, or from a shape guessed from its parameter count, for
each quantization level it offers: see :func:`hub_level_fits`.

``python -m lowbit.core.fit MODEL.gguf N_CTX`` repeats the measurement for one model
and context and prints the numbers as JSON.
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .gguf_file import GGUFFile, open_gguf

if TYPE_CHECKING:
    from .hub import HubModel

MIB = 2**20
# (bytes per block, values per block) of the KV cache types.
KV_CACHE_TYPES: dict[str, tuple[int, int]] = {"f16": (2, 1), "q8_0": (34, 32)}
OVERHEAD_FIXED_BYTES = round(13.2 * MIB)
OVERHEAD_BYTES_PER_VOCAB_ENTRY = 331
FITS_BELOW = 0.8  # of the available memory

# Queries per attention task in the library (LB_ATT_TILE), and keys per attention
# chunk (LB_ATT_CHUNK): each thread keeps a chunk's score rows and results for a task.
_ATT_TILE = 16
_ATT_CHUNK = 128
# Encoded-activation buffers in the library (LB_ACT_SLOTS).
_ACT_SLOTS = 2

# The activation encodings the kernels pair with each weight type (the traits
# table's vec_dot_type), by GGML type id of the weight: bytes per block and values
# per block.
_ACT_ENCODING: dict[int, tuple[int, int]] = {
    0: (4, 1), 1: (4, 1), 30: (4, 1),  # F32, F16, BF16 -> F32
    2: (34, 32), 6: (34, 32), 20: (34, 32),  # Q4_0, Q5_0, IQ4_NL -> Q8_0
    8: (68, 32),  # Q8_0 -> Q16 (Lowbit's 16-bit activations)
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


def scratch_bytes(
    gf: GGUFFile, hp: Any, *, n_ctx: int, n_batch: int = 256, n_threads: int, cache_type: str = "f16"
) -> int:
    """The C library's activation buffers, as ``lb_model_ready`` allocates them."""
    act = 0  # the largest encoded activation row over the matrices
    matrices = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    names = {t.name for t in _used_tensors(gf)}
    out_name = "output.weight" if "output.weight" in names else "token_embd.weight"
    for t in _used_tensors(gf):
        if t.name == out_name or any(f".{m}.weight" in t.name for m in matrices):
            block, values = _ACT_ENCODING.get(t.type_id, (4, 1))
            act = max(act, math.ceil(t.shape[0] / values) * block)
    return _buffer_bytes(
        hp, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, act_row=act, cache_type=cache_type
    )


def _buffer_bytes(
    shape: Any, *, n_ctx: int, n_batch: int, n_threads: int, act_row: int, cache_type: str
) -> int:
    """lb_model_ready's buffers for a shape (n_embd, n_head, n_head_kv, head_dim, n_ff,
    rope_dim) whose widest encoded activation row takes act_row bytes."""
    nb = min(n_batch, n_ctx)
    q_dim = shape.n_head * shape.head_dim
    kv_dim = shape.n_head_kv * shape.head_dim
    floats = nb * (
        shape.n_embd  # x
        + max(shape.n_embd, q_dim)  # xn
        + q_dim  # q
        + 2 * kv_dim  # k, v
        + shape.n_embd  # tmp
        + 2 * shape.n_ff  # gate, up
        + shape.rope_dim  # rope cos/sin
    )
    part = shape.head_dim + 2  # a chunk's result for one query: values, softmax max and sum
    att = (
        n_threads * _ATT_TILE * (_ATT_CHUNK + part)  # each thread's scores and results
        + shape.n_head * math.ceil(n_ctx / _ATT_CHUNK) * part  # a decoding step's chunk results
    )
    inv_freq = (shape.rope_dim // 2) * 8
    query = 0  # a Q8_0 cache: each thread's query head encoded to Q8_0
    if cache_type.lower() == "q8_0":
        block, values = KV_CACHE_TYPES["q8_0"]
        query = n_threads * math.ceil(shape.head_dim / values) * block
    # the scales and quant sum (12 bytes) of each Q8_0- or Q8_1-encoded activation
    # block, for the repacked weights' kernels
    info = 12 * nb * (max(shape.n_embd, q_dim, shape.n_ff) // 32 + 1)
    # two slots of encoded activations (matrices that read one input in two formats)
    return 4 * (floats + att) + inv_freq + _ACT_SLOTS * (nb * act_row + info) + query


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
        scratch_bytes=scratch_bytes(
            gf, hp, n_ctx=n_ctx, n_batch=n_batch, n_threads=threads, cache_type=cache_type
        ),
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


# -- models not on disk yet: a Hub repository's files and config ------------------------

# Shape of a model guessed from its parameter count alone, fitted to llama and qwen2
# models from 135M to 70B parameters (SmolLM2, Qwen2.5, Llama 3.x): width and depth
# grow as a power of the size, and so does the KV cache per token, since larger models
# share KV heads more widely. It lands within a factor of two of the real cache.
_GUESS_REF_PARAMS = 8e9
_GUESS_REF_LAYERS = 32
_GUESS_REF_EMBD = 4096
_GUESS_REF_KV_PER_TOKEN = 131072  # F16 bytes per token of an 8B model (32 layers x 8 KV heads x 128)
_GUESS_VOCAB = 128000  # recent vocabularies (Llama 3, Qwen2.5) are this size or larger
_SHARD_NAME = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")
_FLOAT_LEVELS = ("F32", "F16", "BF16")
# A quantized weight type Lowbit does not know: the largest 8-bit activation encoding.
_ACT_DEFAULT_QUANT = (292, 256)


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that size a model's cache, buffers and weights.

    Read from a Hugging Face ``config.json`` (:func:`shape_from_config`) or guessed from
    the parameter count (:func:`shape_from_params`, ``exact`` False).
    """

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    tied_embeddings: bool = False
    qkv_bias: bool = False
    exact: bool = True

    @property
    def rope_dim(self) -> int:
        return self.head_dim

    @property
    def n_params(self) -> int:
        """Weights in the matrices, embeddings and norms (biases included)."""
        return sum(math.prod(shape) for shape in _shape_tensors(self).values())


def shape_from_config(config: Mapping[str, Any] | None) -> ModelShape | None:
    """The shape in a Hugging Face ``config.json`` (or its ``text_config``), or None when
    it lacks the layer count, width or head count."""
    if not config:
        return None
    cfg: Mapping[str, Any] = config
    if "num_hidden_layers" not in cfg and isinstance(cfg.get("text_config"), Mapping):
        cfg = cfg["text_config"]

    def num(*keys: str) -> int | None:
        for k in keys:
            v = cfg.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    n_layer = num("num_hidden_layers", "n_layer", "num_layers")
    n_embd = num("hidden_size", "n_embd", "d_model")
    n_head = num("num_attention_heads", "n_head")
    if not (n_layer and n_embd and n_head):
        return None
    n_head_kv = num("num_key_value_heads", "n_head_kv") or n_head
    head_dim = num("head_dim") or n_embd // n_head
    if head_dim < 1:
        return None
    model_type = str(cfg.get("model_type") or config.get("model_type") or "")
    return ModelShape(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=min(n_head_kv, n_head),
        head_dim=head_dim,
        n_ff=num("intermediate_size", "n_inner", "ffn_dim") or 4 * n_embd,
        n_vocab=num("vocab_size") or _GUESS_VOCAB,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        qkv_bias=bool(cfg.get("attention_bias", False)) or model_type == "qwen2",
        exact=True,
    )


def shape_from_params(n_params: int) -> ModelShape:
    """A typical llama-like shape for a parameter count (``exact`` False).

    Raises:
        ValueError: A parameter count below 1.
    """
    if n_params < 1:
        raise ValueError("the parameter count must be at least 1")
    scale = n_params / _GUESS_REF_PARAMS
    n_layer = min(128, max(4, round(_GUESS_REF_LAYERS * scale**0.2)))
    n_embd = max(256, 64 * round(_GUESS_REF_EMBD * scale**0.4 / 64))
    head_dim = 64 if n_embd < 1024 else 128
    n_head = max(1, n_embd // head_dim)
    kv_dim = _GUESS_REF_KV_PER_TOKEN * scale**0.43 / (2 * n_layer * 2)
    n_head_kv = min(n_head, max(1, round(kv_dim / head_dim)))
    return ModelShape(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=64 * round(3.5 * n_embd / 64),
        n_vocab=_GUESS_VOCAB,
        exact=False,
    )


def _shape_tensors(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """The tensors of a llama/qwen2 model of this shape: GGUF names, numpy order (rows first)."""
    q_dim, kv_dim = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    out: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (shape.n_vocab, shape.n_embd),
        "output_norm.weight": (shape.n_embd,),
    }
    if not shape.tied_embeddings:
        out["output.weight"] = (shape.n_vocab, shape.n_embd)
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = (shape.n_embd,)
        out[p + "attn_q.weight"] = (q_dim, shape.n_embd)
        out[p + "attn_k.weight"] = (kv_dim, shape.n_embd)
        out[p + "attn_v.weight"] = (kv_dim, shape.n_embd)
        out[p + "attn_output.weight"] = (shape.n_embd, q_dim)
        if shape.qkv_bias:
            out[p + "attn_q.bias"] = (q_dim,)
            out[p + "attn_k.bias"] = (kv_dim,)
            out[p + "attn_v.bias"] = (kv_dim,)
        out[p + "ffn_norm.weight"] = (shape.n_embd,)
        out[p + "ffn_gate.weight"] = (shape.n_ff, shape.n_embd)
        out[p + "ffn_up.weight"] = (shape.n_ff, shape.n_embd)
        out[p + "ffn_down.weight"] = (shape.n_embd, shape.n_ff)
    return out


@dataclass(frozen=True)
class PresetSize:
    """What a quantization preset makes of a model of a given shape."""

    preset: str
    weights_bytes: int  # tensor data, exact for the shape
    act_encoding: tuple[int, int]  # (bytes, values) per block of the widest activation row


def preset_size(shape: ModelShape, preset: str) -> PresetSize:
    """Weight bytes of a preset for a model shape, with Lowbit's own per-tensor mixture rules.

    Remembered per shape and preset: planning a large model takes a noticeable fraction
    of a second, and a context change asks again.

    Raises:
        QuantizeError: An unknown preset.
    """
    return _preset_size(shape, preset)


@functools.lru_cache(maxsize=512)
def _preset_size(shape: ModelShape, preset: str) -> PresetSize:
    from .convert import SourceModel, SourceTensor
    from .quantize import plan_preset

    tensors = {}
    for name, dims in _shape_tensors(shape).items():
        parts = name.split(".")
        layer = int(parts[1]) if parts[0] == "blk" else -1
        tensors[name] = SourceTensor(name=name, shape=dims, layer=layer)
    source = SourceModel(
        path=Path(),
        arch="llama",
        name="",
        kv=[],
        tensors=tensors,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_head_kv=shape.n_head_kv,
    )
    plan = plan_preset(source, preset)
    matrices = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    out_name = "token_embd.weight" if shape.tied_embeddings else "output.weight"
    act = 0
    best = (4, 1)
    for name, qtype in plan.types.items():
        if name == out_name or any(f".{m}.weight" in name for m in matrices):
            block, values = _ACT_ENCODING.get(int(qtype), (4, 1))
            row = math.ceil(tensors[name].shape[1] / values) * block
            if row > act:
                act, best = row, (block, values)
    return PresetSize(preset=preset, weights_bytes=plan.data_bytes, act_encoding=best)


def act_encoding_of_level(level: str) -> tuple[int, int]:
    """(bytes, values) per block of the activations paired with a quantization level's
    main weight type, e.g. "Q4_0" -> Q8_0's (34, 32); float levels keep F32 (4, 1)."""
    if level.upper() in _FLOAT_LEVELS:
        return (4, 1)
    qtype = _level_type(level)
    if qtype is None:
        return _ACT_DEFAULT_QUANT
    return _ACT_ENCODING.get(int(qtype), _ACT_DEFAULT_QUANT)


def _level_type(level: str) -> Any:
    """The main GGML type of a preset ("Q4_K_M" -> Q4_K) or type name, or None."""
    import gguf

    from .quantize import PRESETS

    name = level.upper()
    if name in PRESETS:
        return PRESETS[name][0]
    for candidate in (name, name.rsplit("_", 1)[0]):
        if candidate in gguf.GGMLQuantizationType.__members__:
            return gguf.GGMLQuantizationType[candidate]
    return None


def level_bits_per_weight(level: str | None) -> float | None:
    """Nominal bits per weight of a quantization level's main type ("Q4_K_M" -> 4.5), or None."""
    import gguf

    qtype = _level_type(level) if level else None
    if qtype is None:
        return None
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return 8.0 * size / block


def estimate_memory_from_shape(
    shape: ModelShape,
    *,
    weights_bytes: int,
    n_ctx: int,
    cache_type: str = "f16",
    n_threads: int | None = None,
    n_batch: int = 256,
    act_encoding: tuple[int, int] = (4, 1),
) -> MemoryEstimate:
    """Memory needed to run a model known only by its shape, as :func:`estimate_memory`
    computes it from a file.

    The KV cache and buffers follow the same formulas; the runtime overhead counts as
    many tokenizer merges as tokens (a BPE vocabulary).

    Args:
        shape: The model's dimensions.
        weights_bytes: Bytes of the weights (a GGUF file's size, or :func:`preset_size`).
        n_ctx: Context length.
        cache_type: KV cache type, "f16" or "q8_0".
        n_threads: Threads; default: physical cores.
        n_batch: Tokens per prompt step.
        act_encoding: (bytes, values) per block of the widest encoded activation row.

    Returns:
        The parts of the estimate.

    Raises:
        ValueError: An unknown cache type or a context length below 1.
    """
    from .model import default_threads

    kv_bytes_per_value(cache_type)
    if n_ctx < 1:
        raise ValueError("the context length must be at least 1")
    block, values = act_encoding
    act = math.ceil(max(shape.n_embd, shape.n_head * shape.head_dim, shape.n_ff) / values) * block
    scratch = _buffer_bytes(
        shape,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_threads=n_threads or default_threads(),
        act_row=act,
        cache_type=cache_type,
    )
    return MemoryEstimate(
        weights_bytes=int(weights_bytes),
        kv_bytes=kv_cache_bytes(shape, n_ctx, cache_type),
        scratch_bytes=scratch,
        overhead_bytes=OVERHEAD_FIXED_BYTES + OVERHEAD_BYTES_PER_VOCAB_ENTRY * 2 * shape.n_vocab,
        n_ctx=n_ctx,
        cache_type=cache_type.lower(),
    )


@dataclass(frozen=True)
class LevelFit:
    """One quantization level of a Hub model: its memory need and verdict at a context."""

    level: str  # "Q4_K_M": a GGUF file's type, a preset, or the file's name when untyped
    files: tuple[str, ...]  # the GGUF file (all its shards); empty for a preset made here
    weights_bytes: int
    fit: FitResult
    exact: bool  # False when the shape was guessed from the parameter count or file size

    @property
    def verdict(self) -> str:
        return self.fit.verdict

    @property
    def total_bytes(self) -> int:
        return self.fit.estimate.total_bytes


def gguf_groups(files: Sequence[Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """A repository's GGUF models: (label, files), one per model with all its shards,
    smallest first. Vision projectors (``mmproj``) are left out: they do not run alone.

    Args:
        files: HubFile-like objects (``name``, ``size``, ``kind``, ``quant_type``).
    """
    groups: dict[str, list[Any]] = {}
    for f in files:
        if f.kind != "gguf" or "mmproj" in f.name.rsplit("/", 1)[-1].lower():
            continue
        m = _SHARD_NAME.match(f.name)
        groups.setdefault(m.group(1) if m else f.name, []).append(f)
    out = []
    for key, members in groups.items():
        members.sort(key=lambda f: f.name)
        label = next((f.quant_type for f in members if f.quant_type), None)
        out.append((label or key.rsplit("/", 1)[-1].removesuffix(".gguf"), tuple(members)))
    out.sort(key=lambda g: sum(f.size or 0 for f in g[1]))
    return out


def hub_level_fits(
    model: HubModel,
    *,
    n_ctx: int,
    config: Mapping[str, Any] | None = None,
    cache_type: str = "f16",
    n_threads: int | None = None,
    n_batch: int = 256,
    available: int | None = None,
) -> list[LevelFit]:
    """Fits / tight / will not fit for each quantization level a Hub model offers.

    A repository with GGUF files offers each GGUF model (weights: its file size); a
    full-precision repository offers F16 and every quantization preset (weights: the
    preset's mixture applied to the shape in ``config``, else its nominal bits per
    weight times the parameter count). The cache, buffers and overhead come from the
    config's shape, else from a shape guessed from the parameter count (or from a GGUF
    file's size and type): those levels are marked not exact.

    Args:
        model: A :class:`~lowbit.core.hub.HubModel` with its files (``model_details``).
        n_ctx: Context length.
        config: The repository's ``config.json``, when there is one.
        cache_type, n_threads, n_batch: As in :func:`estimate_memory`.
        available: Bytes of memory available; default: now (psutil).

    Returns:
        One entry per level; empty when the size of the model is unknown.

    Raises:
        ValueError: An unknown cache type or a context length below 1.
    """
    from .quantize import QUANT_PRESETS

    kv_bytes_per_value(cache_type)
    if n_ctx < 1:
        raise ValueError("the context length must be at least 1")
    have = available_memory() if available is None else available
    shape = shape_from_config(config)
    n_params = model.n_params
    files = list(model.files or ())
    options = {"n_ctx": n_ctx, "cache_type": cache_type, "n_threads": n_threads, "n_batch": n_batch}
    out: list[LevelFit] = []
    groups = gguf_groups(files)
    if groups:
        for label, members in groups:
            if any(f.size is None for f in members):
                continue
            size = sum(f.size for f in members)
            s = shape
            if s is None:
                bpw = level_bits_per_weight(label) or 4.5
                s = shape_from_params(n_params or max(1, round(size * 8 / bpw)))
            est = estimate_memory_from_shape(
                s, weights_bytes=size, act_encoding=act_encoding_of_level(label), **options
            )
            fit = check_fit(est, available=have)
            out.append(LevelFit(label, tuple(f.name for f in members), size, fit, s.exact))
        return out
    if not any(f.kind == "safetensors" for f in files) or (shape is None and not n_params):
        return out
    for preset in ("F16", *QUANT_PRESETS):
        if shape is not None:
            ps = preset_size(shape, preset)
            weights, act, s = ps.weights_bytes, ps.act_encoding, shape
        else:
            s = shape_from_params(n_params)
            weights = round(n_params * (level_bits_per_weight(preset) or 16.0) / 8)
            act = act_encoding_of_level(preset)
        est = estimate_memory_from_shape(s, weights_bytes=weights, act_encoding=act, **options)
        out.append(LevelFit(preset, (), weights, check_fit(est, available=have), s.exact))
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Measure a model's resident memory with a full context.")
    ap.add_argument("model")
    ap.add_argument("n_ctx", type=int)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(json.dumps(_measure_here(a.model, a.n_ctx, a.threads)))
