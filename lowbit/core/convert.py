"""Model sources for the quantizer, and conversion between GGUF and Hugging Face folders.

A *source* is a full-precision model in one of two forms:

- a Hugging Face folder: ``config.json``, ``*.safetensors`` (one file, or several
  with ``model.safetensors.index.json``), ``tokenizer.json``, and optionally
  ``tokenizer_config.json`` and ``generation_config.json``; architectures
  ``LlamaForCausalLM`` and ``Qwen2ForCausalLM``; weights F32, F16 or BF16;
- a GGUF file whose weights are F32, F16 or BF16.

Either way the quantizer sees the same thing: GGUF tensor names, float32 arrays in
numpy (row-major, rows = outputs) order, and the GGUF metadata to write. The
Hugging Face → GGUF mapping follows the conventions llama.cpp reads: tensor names,
the Q/K row permutation of the ``llama`` architecture (GGUF stores the two halves
of each RoPE head interleaved), and the ``tokenizer.ggml.*`` vocabulary keys.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    ModelFormatError,
    ModelNotFoundError,
    TokenizerError,
    UnsafeCheckpointError,
    UnsupportedModelError,
)
from .safetensors_io import SafeTensorsFile, to_float32, write_safetensors

HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
GGUF_TO_HF_ARCH = {v: k for k, v in HF_ARCHITECTURES.items()}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# Hugging Face per-layer names -> GGUF names (llama.cpp's tensor naming).
_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_REVERSE_LAYER_MAP = {v: k for k, v in _LAYER_MAP.items()}
_REVERSE_GLOBAL_MAP = {v: k for k, v in _GLOBAL_MAP.items()}
FLOAT_GGUF_TYPES = {0: "F32", 1: "F16", 30: "BF16"}

# GGUF value types (gguf.GGUFValueType), kept as plain ints in KV tuples.
_U32, _I32, _F32, _BOOL, _STR, _ARR = 4, 5, 6, 7, 8, 9


@dataclass(frozen=True)
class KV:
    """One GGUF metadata entry with its value type (and element type for arrays)."""

    key: str
    value: Any
    vtype: int
    sub_type: int | None = None


@dataclass(frozen=True)
class SourceTensor:
    """A tensor of a source model under its GGUF name; shape in numpy order (rows first)."""

    name: str
    shape: tuple[int, ...]
    layer: int  # -1 for tensors outside the blocks

    @property
    def kind(self) -> str:
        """The name without the block prefix, e.g. ``attn_v.weight``."""
        return self.name.split(".", 2)[2] if self.layer >= 0 else self.name

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass
class SourceModel:
    """A full-precision model ready to be quantized or converted."""

    path: Path
    arch: str
    name: str
    kv: list[KV]
    tensors: dict[str, SourceTensor]
    n_layer: int
    n_head: int
    n_head_kv: int
    _loaders: dict[str, Any] = field(default_factory=dict, repr=False)
    _closers: list[Any] = field(default_factory=list, repr=False)

    def load(self, name: str) -> np.ndarray:
        """The tensor's values as a new float32 array in numpy order."""
        return self._loaders[name]()

    def metadata(self) -> dict[str, Any]:
        """The metadata as plain values (for building the tokenizer, reading hparams)."""
        return {kv.key: kv.value for kv in self.kv}

    def close(self) -> None:
        for c in self._closers:
            c()
        self._closers.clear()

    def __enter__(self) -> SourceModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(path: str | os.PathLike[str]) -> SourceModel:
    """Open a full-precision model: a Hugging Face folder or an F32/F16/BF16 GGUF file.

    Args:
        path: The folder or file.

    Returns:
        The source; close it when done (or use it as a context manager).

    Raises:
        ModelNotFoundError: The path does not exist.
        UnsafeCheckpointError: The folder holds only pickle checkpoints.
        UnsupportedModelError: An architecture or weight type that Lowbit cannot quantize,
            or a GGUF that is already quantized.
        ModelFormatError: Missing or inconsistent files, tensors or shapes.
        TokenizerError: The tokenizer files are missing or unusable.
    """
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"model not found: {p}")
    if p.is_dir():
        return _open_hf(p)
    return _open_gguf(p)


# ---------------------------------------------------------------- GGUF sources


def _open_gguf(p: Path) -> SourceModel:
    from .gguf_file import open_gguf
    from .model import read_hparams

    gf = open_gguf(p)
    hp = read_hparams(gf)
    quantized = sorted({t.type_name for t in gf.tensors.values() if t.type_id not in FLOAT_GGUF_TYPES})
    if quantized:
        raise UnsupportedModelError(
            f"{p.name} is already quantized ({', '.join(quantized)}); quantize from the full-precision "
            "model (F32, F16 or BF16 GGUF, or the Hugging Face folder), since quantizing twice adds "
            "the errors of both"
        )
    kv = []
    for key, value in gf.metadata.items():
        types = gf.value_types.get(key)
        if key.startswith("GGUF.") or not types:
            continue
        vtype = types[0]
        sub = types[-1] if vtype == _ARR and len(types) > 1 else None
        kv.append(KV(key, value, vtype, sub))
    tensors: dict[str, SourceTensor] = {}
    loaders: dict[str, Any] = {}
    for name, t in gf.tensors.items():
        shape = tuple(reversed(t.shape))
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        tensors[name] = SourceTensor(name, shape, layer)
        loaders[name] = _gguf_loader(t.data, t.type_id, shape)
    return SourceModel(
        path=p,
        arch=hp.arch,
        name=str(gf.metadata.get("general.name") or p.stem),
        kv=kv,
        tensors=tensors,
        n_layer=hp.n_layer,
        n_head=hp.n_head,
        n_head_kv=hp.n_head_kv,
        _loaders=loaders,
    )


def _gguf_loader(data: np.ndarray, type_id: int, shape: tuple[int, ...]) -> Any:
    dtype = FLOAT_GGUF_TYPES[type_id]

    def load() -> np.ndarray:
        words = data.view(np.float32 if dtype == "F32" else np.float16 if dtype == "F16" else np.uint16)
        w = to_float32(words, dtype)  # a view of the file for F32: copy it
        return (w.copy() if dtype == "F32" else w).reshape(shape)

    return load


# ----------------------------------------------------------------- HF sources


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"cannot read {what} {path.name}: {e}") from e


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = _read_json(index, "the shard index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFormatError(f"{index.name} has no weight_map")
        names = sorted(set(weight_map.values()))
        for n in names:
            if Path(n).name != n:
                raise ModelFormatError(f"{index.name} names a shard outside the folder: {n!r}")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ModelFormatError(f"shard(s) listed in {index.name} are missing: {', '.join(missing)}")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeCheckpointError(
            f"{folder.name} has only pickle checkpoints ({', '.join(pickles[:3])}). Lowbit does not open "
            "pickle files because loading one can run arbitrary code. Download the model's "
            "*.safetensors files instead, or convert the checkpoint to safetensors yourself in a "
            "trusted environment (e.g. transformers' save_pretrained(..., safe_serialization=True))."
        )
    raise ModelFormatError(f"{folder.name} has no *.safetensors weights")


def _hf_config(folder: Path) -> tuple[dict[str, Any], str]:
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise ModelFormatError(f"{folder.name} is not a Hugging Face model folder: config.json is missing")
    cfg = _read_json(cfg_path, "the model config")
    if not isinstance(cfg, dict):
        raise ModelFormatError("config.json does not hold a JSON object")
    archs = cfg.get("architectures") or []
    arch = next((HF_ARCHITECTURES[a] for a in archs if a in HF_ARCHITECTURES), None)
    if arch is None:
        raise UnsupportedModelError(
            f"architecture {', '.join(map(str, archs)) or '(none given)'} is not supported; Lowbit "
            f"quantizes {', '.join(HF_ARCHITECTURES)}"
        )
    return cfg, arch


def _cfg_int(cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    v = cfg.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ModelFormatError(f"config.json: {key} must be a positive integer, not {v!r}")
    return v


def _open_hf(folder: Path) -> SourceModel:
    cfg, arch = _hf_config(folder)
    n_embd = _cfg_int(cfg, "hidden_size")
    n_layer = _cfg_int(cfg, "num_hidden_layers")
    n_head = _cfg_int(cfg, "num_attention_heads")
    n_head_kv = _cfg_int(cfg, "num_key_value_heads", n_head)
    n_ff = _cfg_int(cfg, "intermediate_size")
    head_dim = _cfg_int(cfg, "head_dim", n_embd // n_head) if cfg.get("head_dim") else n_embd // n_head
    if n_head % n_head_kv:
        raise ModelFormatError(f"{n_head} attention heads are not a multiple of {n_head_kv} KV heads")
    tok_meta = hf_tokenizer_metadata(folder)
    n_vocab = _cfg_int(cfg, "vocab_size")

    files = _safetensors_files(folder)
    opened: list[SafeTensorsFile] = []
    where: dict[str, SafeTensorsFile] = {}
    try:
        for f in files:
            st = SafeTensorsFile(f)
            opened.append(st)
            for name in st.tensors:
                where[name] = st
    except OSError as e:
        raise ModelFormatError(f"cannot read {f.name}: {e}") from e

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    expected: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (n_vocab, n_embd),
        "output_norm.weight": (n_embd,),
        "output.weight": (n_vocab, n_embd),
    }
    per_layer = {
        "attn_norm.weight": (n_embd,),
        "attn_q.weight": (q_dim, n_embd),
        "attn_k.weight": (kv_dim, n_embd),
        "attn_v.weight": (kv_dim, n_embd),
        "attn_output.weight": (n_embd, q_dim),
        "attn_q.bias": (q_dim,),
        "attn_k.bias": (kv_dim,),
        "attn_v.bias": (kv_dim,),
        "ffn_norm.weight": (n_embd,),
        "ffn_gate.weight": (n_ff, n_embd),
        "ffn_up.weight": (n_ff, n_embd),
        "ffn_down.weight": (n_embd, n_ff),
    }
    tensors: dict[str, SourceTensor] = {}
    loaders: dict[str, Any] = {}
    order: list[tuple[int, int, str]] = []
    for hf_name, st in where.items():
        gname, layer = _gguf_name(hf_name)
        if gname is None:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue  # recomputed from the config
            raise UnsupportedModelError(f"unexpected tensor {hf_name!r} for a {arch} model")
        if layer >= n_layer:
            raise ModelFormatError(f"tensor {hf_name!r} names layer {layer}, but the model has {n_layer}")
        want = expected.get(gname) if layer < 0 else per_layer[gname.split(".", 2)[2]]
        got = st.tensors[hf_name].shape
        if got != want:
            raise ModelFormatError(
                f"tensor {hf_name!r} has shape {list(got)}, but config.json implies {list(want)}"
            )
        tensors[gname] = SourceTensor(gname, got, layer)
        loaders[gname] = _hf_loader(st, hf_name, gname, arch, n_head, n_head_kv)
        order.append((layer if layer >= 0 else (-1 if gname == "token_embd.weight" else 1 << 30), 0, gname))

    tied = bool(cfg.get("tie_word_embeddings", False))
    if "output.weight" in tensors and tied:
        del tensors["output.weight"]  # the same matrix as the embeddings
    required = ["token_embd.weight", "output_norm.weight"]
    for i in range(n_layer):
        required += [f"blk.{i}.{k}" for k in per_layer if not k.endswith(".bias")]
        if arch == "qwen2":
            required += [f"blk.{i}.attn_{x}.bias" for x in "qkv"]
    missing = [n for n in required if n not in tensors]
    if missing:
        raise ModelFormatError(
            f"{len(missing)} tensor(s) are missing from the safetensors files, e.g. {_hf_name(missing[0])!r}"
        )
    if "output.weight" not in tensors and not tied:
        raise ModelFormatError("lm_head.weight is missing and the config does not tie it to the embeddings")

    rope_theta = float(cfg.get("rope_theta", 10000.0))
    kv = [
        KV("general.architecture", arch, _STR),
        KV("general.name", str(cfg.get("_name_or_path") or folder.name).rstrip("/").split("/")[-1], _STR),
        KV(f"{arch}.vocab_size", n_vocab, _U32),
        KV(f"{arch}.context_length", _cfg_int(cfg, "max_position_embeddings", 4096), _U32),
        KV(f"{arch}.embedding_length", n_embd, _U32),
        KV(f"{arch}.block_count", n_layer, _U32),
        KV(f"{arch}.feed_forward_length", n_ff, _U32),
        KV(f"{arch}.attention.head_count", n_head, _U32),
        KV(f"{arch}.attention.head_count_kv", n_head_kv, _U32),
        KV(f"{arch}.attention.layer_norm_rms_epsilon", float(cfg.get("rms_norm_eps", 1e-6)), _F32),
        KV(f"{arch}.rope.freq_base", rope_theta, _F32),
        KV(f"{arch}.rope.dimension_count", head_dim, _U32),
    ]
    if head_dim != n_embd // n_head:
        kv += [KV(f"{arch}.attention.key_length", head_dim, _U32)]
        kv += [KV(f"{arch}.attention.value_length", head_dim, _U32)]
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if kind == "linear":
        kv += [KV(f"{arch}.rope.scaling.type", "linear", _STR)]
        kv += [KV(f"{arch}.rope.scaling.factor", float(scaling["factor"]), _F32)]
    elif kind == "llama3":
        freqs = llama3_rope_factors(scaling, head_dim, rope_theta)
        tensors["rope_freqs.weight"] = SourceTensor("rope_freqs.weight", freqs.shape, -1)
        loaders["rope_freqs.weight"] = freqs.copy
        order.append((-1, 1, "rope_freqs.weight"))
    elif kind not in (None, "default"):
        raise UnsupportedModelError(f"RoPE scaling {kind!r} is not supported")
    kv += tok_meta

    ordered = {n: tensors[n] for _, _, n in sorted(order) if n in tensors}
    return SourceModel(
        path=folder,
        arch=arch,
        name=kv[1].value,
        kv=kv,
        tensors=ordered,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        _loaders=loaders,
        _closers=[st.close for st in opened],
    )


def _gguf_name(hf_name: str) -> tuple[str | None, int]:
    if hf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[hf_name], -1
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        g = _LAYER_MAP.get(parts[3])
        if g is not None:
            return f"blk.{int(parts[2])}.{g}", int(parts[2])
    return None, -1


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _REVERSE_GLOBAL_MAP:
        return _REVERSE_GLOBAL_MAP[gguf_name]
    _, layer, rest = gguf_name.split(".", 2)
    return f"model.layers.{layer}.{_REVERSE_LAYER_MAP[rest]}"


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face → GGUF ``llama`` row order of a Q or K projection (or its bias).

    Hugging Face rotates the two halves of each head ("NEOX" order); llama.cpp's
    ``llama`` rotates adjacent pairs, so each head's rows are interleaved.
    """
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of :func:`permute_qk`."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_loader(st: SafeTensorsFile, hf_name: str, gname: str, arch: str, n_head: int, n_head_kv: int) -> Any:
    heads = None
    if arch == "llama" and (".attn_q." in gname or ".attn_k." in gname):
        heads = n_head if ".attn_q." in gname else n_head_kv

    def load() -> np.ndarray:
        try:
            w = st.load_f32(hf_name)
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"cannot read tensor {hf_name!r} from {st.path.name}: {e}") from e
        if heads is not None:
            w = np.ascontiguousarray(permute_qk(w, heads))
        return w

    return load


def llama3_rope_factors(scaling: dict[str, Any], head_dim: int, theta: float) -> np.ndarray:
    """Per-frequency divisors of Llama 3.x RoPE scaling (``rope_freqs.weight``).

    The rule is Meta's published one: wavelengths shorter than
    ``original_max_position_embeddings / high_freq_factor`` keep their frequency,
    longer than ``… / low_freq_factor`` are divided by ``factor``, and the band between
    is interpolated smoothly.
    """
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    out = np.ones_like(freqs)
    long = wavelen > old_ctx / low
    out[long] = factor
    mid = ~long & (wavelen >= old_ctx / high)
    if high != low:
        smooth = (old_ctx / wavelen[mid] - low) / (high - low)
        out[mid] = 1.0 / ((1 - smooth) / factor + smooth)
    return out.astype(np.float32)


# ------------------------------------------------------------------ tokenizer

_PRE_NAMES = ("smollm", "gpt2", "llama-bpe", "qwen2", "tekken", "gpt-4o")
_PRE_PROBE = (
    "Hello world! I'M here, don't you see? 12345 + 6.78 = 9,999\n\n\tTabs  and   spaces \r\n"
    "ÀÉÎõü 中文字符 ١٢٣ emoji 🦙🦙 <tag attr='x'> foo_bar(baz) #include \"x.h\" 'll 's\n"
)


def _detect_pre(backend: Any) -> str:
    """The ``tokenizer.ggml.pre`` name whose splitting matches the tokenizer's pre-tokenizer.

    Compared by behaviour on a probe text (as llama.cpp's converter identifies
    pre-tokenizers by their output), so equivalent configurations match.
    """
    from tokenizers import Regex, pre_tokenizers

    from .tokenizer import _PRE_TOKENIZERS

    if backend.pre_tokenizer is None:
        raise TokenizerError("tokenizer.json has no pre-tokenizer; Lowbit cannot tell how it splits text")
    want = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(_PRE_PROBE)]
    for name in _PRE_NAMES:
        spec = _PRE_TOKENIZERS[name]
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes]
        cand = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        if [p for p, _ in cand.pre_tokenize_str(_PRE_PROBE)] == want:
            return name
    raise TokenizerError(
        "the tokenizer's pre-tokenizer does not match any that llama.cpp knows "
        f"({', '.join(_PRE_NAMES)}); converting it would tokenize text differently"
    )


def hf_tokenizer_metadata(folder: Path) -> list[KV]:
    """The ``tokenizer.*`` GGUF keys for a Hugging Face folder's tokenizer files.

    Raises:
        TokenizerError: ``tokenizer.json`` is missing or describes a tokenizer that
            GGUF cannot hold.
    """
    from .tokenizer import TOKEN_BYTE, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED, Tokenizer

    tj_path = folder / "tokenizer.json"
    if not tj_path.exists():
        raise TokenizerError(
            f"{folder.name} has no tokenizer.json; Lowbit needs it to write the vocabulary into the GGUF"
        )
    cfg_path = folder / "tokenizer_config.json"
    tok = Tokenizer.from_hf_file(tj_path, cfg_path if cfg_path.exists() else None)
    spec = json.loads(tj_path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(f"tokenizer model {model.get('type')!r} is not supported (Lowbit converts BPE)")
    config = _read_json(cfg_path, "the tokenizer config") if cfg_path.exists() else {}
    try:
        n_cfg = int(_read_json(folder / "config.json", "the model config").get("vocab_size", 0))
    except (FileNotFoundError, TypeError, ValueError):
        n_cfg = 0
    tokens = list(tok.tokens)
    types = list(tok.token_types)
    # The embedding matrix may have more rows than the tokenizer has tokens.
    for i in range(len(tokens), n_cfg):
        tokens.append(f"[PAD{i}]")
        types.append(TOKEN_UNUSED)
    spm = bool(model.get("byte_fallback"))
    kv = [KV("tokenizer.ggml.model", "llama" if spm else "gpt2", _STR)]
    if spm:
        unk = model.get("unk_token")
        for i, t in enumerate(tokens):
            if types[i] == TOKEN_NORMAL and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = TOKEN_BYTE
            elif t == unk:
                types[i] = TOKEN_UNKNOWN
        # A SentencePiece BPE vocabulary is stored best piece first: rank is the score.
        scores = [0.0 if types[i] != TOKEN_NORMAL else -float(i) for i in range(len(tokens))]
        kv += [KV("tokenizer.ggml.pre", "default", _STR)]
        kv += [KV("tokenizer.ggml.tokens", tokens, _ARR, _STR)]
        kv += [KV("tokenizer.ggml.scores", scores, _ARR, _F32)]
        kv += [KV("tokenizer.ggml.token_type", types, _ARR, _I32)]
        kv += [KV("tokenizer.ggml.add_space_prefix", bool(tok.strip_leading_space), _BOOL)]
    else:
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
        if not merges:
            raise TokenizerError("tokenizer.json has a BPE model without merges")
        kv += [KV("tokenizer.ggml.pre", _detect_pre(tok.backend), _STR)]
        kv += [KV("tokenizer.ggml.tokens", tokens, _ARR, _STR)]
        kv += [KV("tokenizer.ggml.token_type", types, _ARR, _I32)]
        kv += [KV("tokenizer.ggml.merges", merges, _ARR, _STR)]

    def config_id(key: str) -> int | None:
        v = config.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        return tok.backend.token_to_id(v) if isinstance(v, str) else None

    ids = {
        "bos": tok.bos_id,
        "eos": tok.eos_id,
        "unknown": config_id("unk_token"),
        "padding": config_id("pad_token"),
    }
    for name, value in ids.items():
        if value is not None:
            kv += [KV(f"tokenizer.ggml.{name}_token_id", int(value), _U32)]
    kv += [KV("tokenizer.ggml.add_bos_token", bool(tok.add_bos), _BOOL)]
    if "add_eos_token" in config:
        kv += [KV("tokenizer.ggml.add_eos_token", bool(config["add_eos_token"]), _BOOL)]
    if tok.chat_template:
        kv += [KV("tokenizer.chat_template", tok.chat_template, _STR)]
    return kv


# ------------------------------------------------------------ GGUF -> HF folder


def gguf_to_hf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    dtype: str = "bf16",
    progress: Any = None,
    cancel: Any = None,
) -> Path:
    """Write a GGUF model (any type Lowbit decodes) as a Hugging Face folder.

    The weights are dequantized to ``dtype`` ("bf16", "f16" or "f32"); the folder gets
    config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
    generation_config.json. It is assembled in a temporary folder next to ``dst`` and
    renamed into place when complete.

    Args:
        src: The GGUF file.
        dst: The folder to create; it must not exist.
        dtype: Weight type of the written safetensors.
        progress: Optional callable (stage, done, total, message).
        cancel: Optional object with ``raise_if_cancelled()``.

    Returns:
        The folder written.

    Raises:
        FileExistsError: ``dst`` exists.
        ModelNotFoundError, ModelFormatError, UnsupportedModelError, TokenizerError:
            The GGUF cannot be read.
        CancelledError: Cancelled; nothing is left behind.
        OSError: Writing failed (e.g. a full disk); nothing is left behind.
    """
    from .gguf_file import open_gguf
    from .model import read_hparams
    from .quants import dequantize_rows
    from .tokenizer import Tokenizer

    kinds = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
    if dtype not in kinds:
        raise ValueError(f"dtype must be one of {', '.join(kinds)}, not {dtype!r}")
    out = Path(dst)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    gf = open_gguf(src)
    hp = read_hparams(gf)
    tok = Tokenizer.from_gguf_metadata(gf.metadata)
    md = gf.metadata
    arch = hp.arch
    tied = "output.weight" not in gf.tensors

    def pieces() -> Iterator[tuple[str, np.ndarray, str]]:
        names = list(gf.tensors)
        for i, name in enumerate(names):
            if cancel is not None:
                cancel.raise_if_cancelled()
            if progress is not None:
                progress("convert", i, len(names), name)
            if name == "rope_freqs.weight":
                continue
            t = gf.tensors[name]
            rows = t.n_elements // t.shape[0]
            w = dequantize_rows(t.type_id, t.data.reshape(rows, -1), t.shape[0])
            w = w.reshape(tuple(reversed(t.shape)))
            if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
                w = unpermute_qk(w, hp.n_head if ".attn_q." in name else hp.n_head_kv)
            yield _hf_name(name), w, kinds[dtype]

    scaling = None
    if str(md.get(f"{arch}.rope.scaling.type", "")) == "linear":
        scaling = {"type": "linear", "factor": float(md[f"{arch}.rope.scaling.factor"])}
    if "rope_freqs.weight" in gf.tensors:
        raise UnsupportedModelError(
            "writing Llama 3 RoPE scaling back to a Hugging Face config is not supported"
        )
    config = {
        "architectures": [GGUF_TO_HF_ARCH[arch]],
        "model_type": arch,
        "hidden_size": hp.n_embd,
        "intermediate_size": hp.n_ff,
        "num_hidden_layers": hp.n_layer,
        "num_attention_heads": hp.n_head,
        "num_key_value_heads": hp.n_head_kv,
        "head_dim": hp.head_dim,
        "max_position_embeddings": hp.n_ctx_train,
        "rms_norm_eps": hp.rms_eps,
        "rope_theta": hp.rope_theta,
        "rope_scaling": scaling,
        "vocab_size": hp.n_vocab,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype],
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
    }
    if arch == "qwen2":
        config["use_sliding_window"] = False

    def token_text(i: int | None) -> str | None:
        return None if i is None else tok.tokens[i]

    tok_config: dict[str, Any] = {
        "add_bos_token": tok.add_bos,
        "bos_token": token_text(tok.bos_id),
        "eos_token": token_text(tok.eos_id),
        "model_max_length": hp.n_ctx_train,
    }
    unk = md.get("tokenizer.ggml.unknown_token_id")
    pad = md.get("tokenizer.ggml.padding_token_id")
    if unk is not None:
        tok_config["unk_token"] = token_text(int(unk))
    if pad is not None:
        tok_config["pad_token"] = token_text(int(pad))
    if tok.chat_template:
        tok_config["chat_template"] = tok.chat_template
    gen_config = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".incomplete", dir=out.parent))
    try:
        write_safetensors(tmp / "model.safetensors", pieces(), metadata={"format": "pt"})
        tok.save_hf(tmp / "tokenizer.json")
        for name, obj in (
            ("config.json", config),
            ("tokenizer_config.json", tok_config),
            ("generation_config.json", gen_config),
        ):
            (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            _fsync(f)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress is not None:
        progress("convert", 1, 1, "done")
    return out


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())
