"""A loaded model: GGUF weights handed to the C library, plus tokenizer and template.

One ``lb_forward`` call runs every layer for a batch of tokens; Python is not on
the per-layer path. The KV cache lives in C; ``Model`` tracks which tokens it
holds so that a new prompt that shares a prefix with the last one only
processes what is new.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    ContextFullError,
    ModelFormatError,
    TokenizerError,
    UnsupportedModelError,
)
from .fit import KV_CACHE_TYPES
from .gguf_file import GGUFFile, TensorInfo, drop_pages, open_gguf
from .native import LB_ERR_INVALID_ARGUMENT, LB_ERR_UNSUPPORTED, check, ffi, last_error, lib

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
DEFAULT_CONTEXT = 4096
KV_TYPE_IDS = {"f16": 1, "q8_0": 8}  # KV cache types and their GGML type ids

_ROLES_GLOBAL = {
    "token_embd.weight": 0,
    "output_norm.weight": 1,
    "output.weight": 2,
    "rope_freqs.weight": 3,
}
_ROLES_LAYER = {
    "attn_norm.weight": 4,
    "attn_q.weight": 5,
    "attn_k.weight": 6,
    "attn_v.weight": 7,
    "attn_output.weight": 8,
    "attn_q.bias": 9,
    "attn_k.bias": 10,
    "attn_v.bias": 11,
    "ffn_norm.weight": 12,
    "ffn_gate.weight": 13,
    "ffn_up.weight": 14,
    "ffn_down.weight": 15,
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def default_threads() -> int:
    """Physical cores, the best thread count for memory-bound decoding."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # psutil can fail inside some sandboxes
        n = None
    return max(1, n or os.cpu_count() or 1)


@dataclass(frozen=True)
class HParams:
    """The architecture's hyperparameters as read from GGUF metadata."""

    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    rms_eps: float
    rope_theta: float
    rope_dim: int
    rope_neox: bool
    rope_pos_scale: float

    def kv_bytes_per_token(self, kv_type: str = "f16") -> int:
        """Bytes the K and V caches hold per token, over every layer."""
        block, values = KV_CACHE_TYPES[check_kv_type(kv_type)]
        return 2 * self.n_layer * self.n_head_kv * -(-self.head_dim // values) * block


def check_kv_type(kv_type: str) -> str:
    """The KV cache type's canonical name ("f16" or "q8_0"), from any case.

    Raises:
        ValueError: Not a KV cache type Lowbit has.
    """
    name = kv_type.lower() if isinstance(kv_type, str) else None
    if name is None or name not in KV_TYPE_IDS:
        raise ValueError(f"unknown KV cache type {kv_type!r}; use one of {', '.join(KV_TYPE_IDS)}")
    return name


def _meta(md: dict[str, Any], key: str, kind: type, *, default: Any = None, required: bool = True) -> Any:
    if key not in md:
        if required and default is None:
            raise ModelFormatError(f"the model's metadata lacks the required key {key!r}")
        return default
    value = md[key]
    if kind is int and isinstance(value, bool):
        raise ModelFormatError(f"metadata {key!r} should be a number")
    try:
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"metadata {key!r} has an invalid value {value!r}") from e


def read_hparams(gf: GGUFFile) -> HParams:
    """Hyperparameters of a supported architecture.

    Raises:
        UnsupportedModelError: The architecture is not one Lowbit runs.
        ModelFormatError: Required metadata is missing or inconsistent.
    """
    md = gf.metadata
    arch = gf.architecture
    if not arch:
        raise ModelFormatError("the model's metadata lacks 'general.architecture'")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture {arch!r} is not supported; Lowbit runs {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    n_embd = _meta(md, f"{arch}.embedding_length", int)
    n_layer = _meta(md, f"{arch}.block_count", int)
    n_ff = _meta(md, f"{arch}.feed_forward_length", int)
    n_head = _meta(md, f"{arch}.attention.head_count", int)
    n_head_kv = _meta(md, f"{arch}.attention.head_count_kv", int, default=n_head)
    rms_eps = _meta(md, f"{arch}.attention.layer_norm_rms_epsilon", float)
    if min(n_embd, n_layer, n_ff, n_head, n_head_kv) <= 0:
        raise ModelFormatError("the model's dimensions in its metadata must be positive")
    head_dim = _meta(md, f"{arch}.attention.key_length", int, default=n_embd // n_head)
    n_ctx_train = _meta(md, f"{arch}.context_length", int, default=DEFAULT_CONTEXT)
    rope_theta = _meta(md, f"{arch}.rope.freq_base", float, default=10000.0)
    rope_dim = _meta(md, f"{arch}.rope.dimension_count", int, default=head_dim)
    scaling = str(md.get(f"{arch}.rope.scaling.type", "none"))
    pos_scale = 1.0
    if scaling == "linear":
        factor = _meta(md, f"{arch}.rope.scaling.factor", float, default=1.0)
        if factor <= 0:
            raise ModelFormatError("rope scaling factor must be positive")
        pos_scale = 1.0 / factor
    elif scaling not in ("none", ""):
        raise UnsupportedModelError(f"RoPE scaling {scaling!r} is not supported")
    emb = gf.tensors.get("token_embd.weight")
    if emb is None:
        raise ModelFormatError("the model has no token_embd.weight tensor")
    n_vocab = emb.shape[1] if len(emb.shape) > 1 else 0
    if n_head % n_head_kv:
        raise ModelFormatError(f"{n_head} attention heads are not a multiple of {n_head_kv} KV heads")
    return HParams(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=n_ff,
        n_ctx_train=n_ctx_train,
        rms_eps=rms_eps,
        rope_theta=rope_theta,
        rope_dim=rope_dim,
        rope_neox=arch == "qwen2",
        rope_pos_scale=pos_scale,
    )


@dataclass
class ModelStats:
    """Sizes worth showing a person."""

    file_bytes: int
    weight_bytes: int
    state_bytes: int  # KV cache and scratch allocated by the library
    n_params: int
    type_counts: dict[str, int] = field(default_factory=dict)


class Model:
    """A GGUF model loaded for inference. Not thread-safe: use it from one thread
    (the core worker); only :meth:`cancel` may be called from any thread."""

    def __init__(
        self,
        gf: GGUFFile,
        hp: HParams,
        *,
        n_ctx: int,
        n_threads: int,
        n_batch: int,
        tokenizer: Any,
        chat_template: Any,
        kv_type: str = "f16",
    ) -> None:
        self.file = gf
        self.path = gf.path
        self.hparams = hp
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.kv_type = check_kv_type(kv_type)
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self._cached: list[int] = []  # tokens whose K/V are in the cache, in order
        self._lock = threading.Lock()
        self._ptr = ffi.NULL
        self._keep: list[Any] = []  # buffers C points into
        self._create()

    # -- loading -------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | Path | GGUFFile,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = 256,
        tokenizer_json: str | Path | None = None,
        kv_type: str = "f16",
    ) -> Model:
        """Load a GGUF model.

        Args:
            path: The GGUF file, or one already opened with :func:`open_gguf`.
            n_ctx: KV cache length in tokens; default: the training context, at most 4096.
            n_threads: Worker threads; default: physical cores.
            n_batch: Tokens per internal step when processing a prompt.
            tokenizer_json: A Hugging Face ``tokenizer.json`` to use instead of the
                vocabulary in the file.
            kv_type: KV cache type, "f16" or "q8_0" (any case). Q8_0 keeps keys and
                values as 8-bit blocks of 32 (about half the memory of F16) and needs a
                head size that is a multiple of 32.

        Returns:
            The loaded model.

        Raises:
            ModelNotFoundError: The file does not exist.
            ModelFormatError: The file is damaged or lacks required metadata.
            UnsupportedModelError: Unknown architecture or tensor type, or a KV cache
                type the model's head size does not allow.
            TokenizerError: The model has no usable vocabulary.
            ValueError: A setting out of range, or an unknown KV cache type.
        """
        from .chat import ChatTemplate
        from .errors import ChatTemplateError
        from .tokenizer import Tokenizer

        kv_type = check_kv_type(kv_type)
        gf = path if isinstance(path, GGUFFile) else open_gguf(path)
        hp = read_hparams(gf)
        if tokenizer_json is not None:
            tj = Path(tokenizer_json)
            cfg = tj.with_name("tokenizer_config.json")
            tok = Tokenizer.from_hf_file(tj, cfg if cfg.exists() else None)
        else:
            if "tokenizer.ggml.tokens" not in gf.metadata:
                raise TokenizerError(
                    f"{gf.path.name} has no vocabulary (tokenizer.ggml.tokens); give a tokenizer.json with it"
                )
            tok = Tokenizer.from_gguf_metadata(gf.metadata)
        if tok.vocab_size > hp.n_vocab:
            raise TokenizerError(
                f"the vocabulary has {tok.vocab_size} tokens but the model's embedding has {hp.n_vocab} rows"
            )
        try:
            template = ChatTemplate.from_gguf_metadata(gf.metadata, tok)
        except ChatTemplateError:
            template = None
        if n_ctx is None:
            n_ctx = min(hp.n_ctx_train, DEFAULT_CONTEXT)
        if n_ctx < 8 or n_ctx > 1 << 20:
            raise ValueError(f"context length {n_ctx} is outside 8..{1 << 20}")
        n_threads = n_threads or default_threads()
        if not 1 <= n_threads <= 1024:
            raise ValueError(f"thread count {n_threads} is outside 1..1024")
        if not 1 <= n_batch <= 8192:
            raise ValueError(f"batch size {n_batch} is outside 1..8192")
        return cls(
            gf,
            hp,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_batch=n_batch,
            tokenizer=tok,
            chat_template=template,
            kv_type=kv_type,
        )

    def _create(self) -> None:
        hp = self.hparams
        cfg = ffi.new("lb_model_config *")
        cfg.arch = 0 if hp.arch == "llama" else 1
        cfg.n_vocab = hp.n_vocab
        cfg.n_embd = hp.n_embd
        cfg.n_layer = hp.n_layer
        cfg.n_head = hp.n_head
        cfg.n_head_kv = hp.n_head_kv
        cfg.head_dim = hp.head_dim
        cfg.n_ff = hp.n_ff
        cfg.rms_eps = hp.rms_eps
        cfg.rope_kind = 1 if hp.rope_neox else 0
        cfg.rope_dim = hp.rope_dim
        cfg.rope_theta = hp.rope_theta
        cfg.rope_pos_scale = hp.rope_pos_scale
        cfg.n_ctx = self.n_ctx
        cfg.n_batch = min(self.n_batch, self.n_ctx)
        cfg.n_threads = self.n_threads
        cfg.kv_type = KV_TYPE_IDS[self.kv_type]
        out = ffi.new("lb_model **")
        status = lib.lb_model_create(cfg, out)
        if status == LB_ERR_UNSUPPORTED:  # e.g. a KV cache type the head size does not allow
            raise UnsupportedModelError(f"{self.path.name}: {last_error()}")
        check(status, "cannot create the model")
        self._ptr = out[0]
        try:
            self._attach_tensors()
            self._check_load(lib.lb_model_ready(self._ptr), "")
        except BaseException:
            self.close()
            raise

    def _attach_tensors(self) -> None:
        tensors = list(self.file.tensors.items())

        # Vectors (norms, biases, rope factors) first, as copies: the library reads them
        # every step, and a read of the file mapping can map far more of it than it
        # reads (the kernel maps whole page-cache folios around a fault), which brought
        # back the pages of repacked matrices: 73 MiB of a Q8_0 SmolLM2 after one step.
        # Then the embedding, and with tied embeddings also as the output matrix: the
        # library repacks that as it is attached, and the embedding's file pages are
        # dropped before any other weight arrives, so the peak holds one copy of each.
        # The rest go in file order.
        def rank(item: tuple[str, TensorInfo]) -> int:
            name, t = item
            return 0 if _is_vector(t) else 1 if name == "token_embd.weight" else 2

        tensors.sort(key=rank)
        if "output.weight" not in self.file.tensors and "token_embd.weight" in self.file.tensors:
            at = next(i for i, (name, _) in enumerate(tensors) if name == "token_embd.weight")
            tensors.insert(at + 1, ("output.weight", self.file.tensors["token_embd.weight"]))
        for name, t in tensors:
            m = _LAYER_RE.match(name)
            if m:
                layer, role = int(m.group(1)), _ROLES_LAYER.get(m.group(2))
            else:
                layer, role = -1, _ROLES_GLOBAL.get(name)
            if role is None:
                continue  # tensors this architecture does not use
            if len(t.shape) > 2 and any(d != 1 for d in t.shape[2:]):
                raise ModelFormatError(f"tensor {name!r} has {len(t.shape)} dimensions, expected 1 or 2")
            ne0 = t.shape[0]
            ne1 = t.shape[1] if len(t.shape) > 1 else 1
            buf = ffi.from_buffer(np.array(t.data) if _is_vector(t) else t.data)
            self._keep.append(buf)
            status = lib.lb_model_set_tensor(self._ptr, role, layer, t.type_id, ne0, ne1, buf, t.nbytes)
            self._check_load(status, name)
            if lib.lb_model_tensor_repacked(self._ptr, role, layer):
                # The library reads its own copy from now on (embedding lookups fault in
                # only the rows they use).
                drop_pages(t)

    def _check_load(self, status: int, what: str) -> None:
        """While loading, the library's complaints are about the file."""
        prefix = f"{self.path.name}: " + (f"{what}: " if what else "")
        if status == LB_ERR_INVALID_ARGUMENT:
            raise ModelFormatError(prefix + last_error())
        if status == LB_ERR_UNSUPPORTED:
            raise UnsupportedModelError(prefix + last_error())
        check(status, what)

    # -- inference -------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    @property
    def n_past(self) -> int:
        """Tokens currently held in the KV cache."""
        return len(self._cached)

    @property
    def cached_tokens(self) -> list[int]:
        return list(self._cached)

    def forward(self, tokens: Sequence[int], pos: int, *, logits_all: bool = False) -> np.ndarray:
        """Run tokens at positions pos.. and return logits.

        Args:
            tokens: Token ids.
            pos: Position of the first token; at most ``n_past`` (a smaller value
                drops the cache from there).
            logits_all: Return every position's logits ([n, vocab]) instead of
                only the last one's ([vocab]).

        Returns:
            float32 logits.

        Raises:
            ContextFullError: pos + len(tokens) exceeds the context length.
            CancelledError: :meth:`cancel` was called during the call.
            InvalidArgumentError: A token id outside the vocabulary, or a bad pos.
        """
        n = len(tokens)
        if n == 0:
            raise ValueError("no tokens to process")
        if pos + n > self.n_ctx:
            raise ContextFullError(
                f"{pos + n} tokens do not fit in the context of {self.n_ctx}",
                needed=pos + n,
                n_ctx=self.n_ctx,
            )
        ids = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            from .errors import InvalidArgumentError

            raise InvalidArgumentError(f"token ids must be in 0..{self.n_vocab - 1}")
        ids32 = ids.astype(np.int32)
        out = np.empty((n if logits_all else 1, self.n_vocab), dtype=np.float32)
        with self._lock:
            if self._ptr == ffi.NULL:
                raise RuntimeError("the model is closed")
            status = lib.lb_forward(
                self._ptr,
                ffi.from_buffer("int32_t[]", ids32),
                n,
                pos,
                ffi.from_buffer("float[]", out, require_writable=True),
                out.size,
                1 if logits_all else 0,
            )
            kept = int(lib.lb_model_n_past(self._ptr))
            self._cached = (self._cached[:pos] + list(map(int, ids32)))[:kept]
        check(status)
        return out if logits_all else out[0]

    def eval_prompt(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits after ``tokens``, reusing the longest cached prefix.

        At least the last token is always recomputed, so its logits are fresh.
        """
        common = 0
        limit = min(len(self._cached), len(tokens) - 1)
        while common < limit and self._cached[common] == tokens[common]:
            common += 1
        return self.forward(tokens[common:], common)

    def reset(self) -> None:
        """Forget the cached tokens."""
        self._cached = []

    def cancel(self) -> None:
        """Stop a running forward call at the next layer boundary (any thread)."""
        ptr = self._ptr
        if ptr != ffi.NULL:
            lib.lb_model_cancel(ptr)

    # -- information -----------------------------------------------------------

    def stats(self) -> ModelStats:
        weight_bytes = sum(t.nbytes for t in self.file.tensors.values())
        state = int(lib.lb_model_state_bytes(self._ptr)) if self._ptr != ffi.NULL else 0
        return ModelStats(
            file_bytes=self.file.size,
            weight_bytes=weight_bytes,
            state_bytes=state,
            n_params=self.file.n_params(),
            type_counts=dict(self.file.type_counts()),
        )

    def describe(self) -> dict[str, Any]:
        """Plain facts about the model, for `--json` outputs and the app."""
        md = self.file.metadata
        s = self.stats()
        return {
            "file": str(self.path),
            "name": md.get("general.name", self.path.stem),
            "architecture": self.hparams.arch,
            "n_params": s.n_params,
            "file_mib": round(s.file_bytes / 2**20, 2),
            "bpw": round(8 * s.weight_bytes / max(1, s.n_params), 3),
            "types": s.type_counts,
            "n_ctx": self.n_ctx,
            "n_ctx_train": self.hparams.n_ctx_train,
            "n_threads": self.n_threads,
            "kv_type": self.kv_type,
        }

    def close(self) -> None:
        """Free the native model. The object is unusable afterwards."""
        with self._lock:
            if self._ptr != ffi.NULL:
                lib.lb_model_free(self._ptr)
                self._ptr = ffi.NULL
            self._keep.clear()
            self._cached = []

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _is_vector(t: TensorInfo) -> bool:
    return all(d == 1 for d in t.shape[1:])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def perplexity(logits: np.ndarray, tokens: Sequence[int]) -> float:
    """Perplexity of tokens[1:] under logits[:-1] (teacher forcing)."""
    lp = log_softmax(logits[:-1])
    nll = -lp[np.arange(len(tokens) - 1), np.asarray(tokens[1:])]
    return float(math.exp(nll.mean()))
