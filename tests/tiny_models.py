"""Tiny random GGUF models built on the fly, and random quantized blocks.

Weights of a quantized type are random *blocks* (random bits with sane scale
fields), so every type can be made even where no encoder exists; the exact
weights a model holds are whatever ``gguf.quants.dequantize`` decodes them to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

# Byte offsets of the fp16 fields in a block (GGML layouts): the scale d first,
# then the minimum (m or dmin) where the type has one.
FP16_FIELDS: dict[QT, tuple[int, ...]] = {
    QT.Q4_0: (0,),
    QT.Q4_1: (0, 2),
    QT.Q5_0: (0,),
    QT.Q5_1: (0, 2),
    QT.Q8_0: (0,),
    QT.IQ4_NL: (0,),
    QT.Q2_K: (80, 82),
    QT.Q3_K: (108,),
    QT.Q4_K: (0, 2),
    QT.Q5_K: (0, 2),
    QT.Q6_K: (208,),
}

WEIGHT_TYPES = [
    QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
    QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_NL,
]  # fmt: skip


def random_blocks(qtype: QT, n_blocks: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Random blocks of a quantized type as uint8 [n_blocks, type_size]."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in FP16_FIELDS[qtype]:
        vals = (rng.uniform(0.5, 1.5, size=n_blocks) * scale).astype(np.float16)
        raw[:, off : off + 2] = vals.view(np.uint8).reshape(n_blocks, 2)
    return raw


def random_tensor(
    qtype: QT, shape: tuple[int, int], rng: np.random.Generator, std: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """(stored, values): the data to write for a [rows, cols] tensor and its float32 values.

    For quantized types the block scales are tuned so the values have roughly
    the wanted standard deviation.
    """
    rows, cols = shape
    if qtype == QT.F32:
        v = (rng.standard_normal(shape) * std).astype(np.float32)
        return v, v
    if qtype == QT.F16:
        s = (rng.standard_normal(shape) * std).astype(np.float16)
        return s, s.astype(np.float32)
    if qtype == QT.BF16:
        v = (rng.standard_normal(shape) * std).astype(np.float32)
        s = gguf.quants.quantize(v, QT.BF16)
        return s, gguf.quants.dequantize(s, QT.BF16).reshape(shape).astype(np.float32)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert cols % block == 0, f"{qtype.name} needs rows that are a multiple of {block}"
    n_blocks = rows * cols // block
    seed = int(rng.integers(1 << 31))
    scale = 1.0
    for _ in range(2):  # measure, then rescale the fp16 scales to hit std
        raw = random_blocks(qtype, n_blocks, np.random.default_rng(seed), scale)
        values = gguf.quants.dequantize(raw.reshape(rows, -1), qtype).reshape(shape)
        cur = float(np.std(values)) or 1.0
        scale *= std / cur
    return raw.reshape(rows, cols // block * type_size), values.astype(np.float32)


# GPT-2's byte-to-character table (a fact of the byte-level BPE format).
def _byte_chars() -> list[str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


@dataclass
class TinyModel:
    path: Path
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rms_eps: float
    rope_theta: float
    tied: bool
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # GGUF names -> float32 values
    types: dict[str, str] = field(default_factory=dict)  # matrix names -> stored type name
    rope_freqs: np.ndarray | None = None
    hf_inv_freq: np.ndarray | None = None  # the llama3-scaled inverse frequencies, HF's way


def llama3_inv_freq(
    head_dim: int, base: float, *, factor: float, low: float, high: float, orig_ctx: int
) -> np.ndarray:
    """Llama 3.1 RoPE scaling of the inverse frequencies, as the published config defines it."""
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv
    low_wl, high_wl = orig_ctx / low, orig_ctx / high
    out = np.where(wavelen > low_wl, inv / factor, inv)
    smooth = (orig_ctx / wavelen - low) / (high - low)
    mid = (wavelen <= low_wl) & (wavelen >= high_wl)
    return np.where(mid, (1 - smooth) * inv / factor + smooth * inv, out)


def make_tiny_model(
    path: Path,
    *,
    arch: str = "llama",
    weight_type: QT = QT.F32,
    embd_type: QT | None = None,
    tied: bool = True,
    llama3_rope: bool = False,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 256,
    n_head: int = 4,
    n_head_kv: int = 2,
    with_vocab: bool = True,
    with_template: bool = True,
    drop_keys: tuple[str, ...] = (),
    role_types: dict[str, QT] | None = None,
) -> TinyModel:
    """Write a small random model. Width 256 by default, so every block type fits.

    role_types: a type per layer matrix role ("attn_v", "ffn_up"...) instead of
    weight_type, for files that mix types as quantization presets do.
    """
    rng = np.random.default_rng(seed)
    n_ff = 512
    head_dim = n_embd // n_head
    byte_chars = _byte_chars()
    extra = ["Ġt", "he", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    tokens = byte_chars + extra
    n_vocab = 288  # a few unused rows, as real models pad their vocabularies
    tokens += [f"<unused{i}>" for i in range(n_vocab - len(tokens))]
    types = [1] * 258 + [3, 3, 3] + [5] * (n_vocab - 261)

    tm = TinyModel(
        path=path, arch=arch, n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        n_head_kv=n_head_kv, head_dim=head_dim, n_ff=n_ff, rms_eps=1e-5, rope_theta=10000.0, tied=tied,
    )  # fmt: skip
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(tm.rms_eps)
    w.add_rope_freq_base(tm.rope_theta)
    w.add_rope_dimension_count(head_dim)
    if with_vocab:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(["Ġ t", "h e"])
        w.add_bos_token_id(tokens.index("<|endoftext|>"))
        w.add_eos_token_id(tokens.index("<|im_end|>"))
        w.add_add_bos_token(False)
    if with_template:
        w.add_chat_template(CHATML)

    def put(name: str, qtype: QT, shape: tuple[int, int], std: float = 0.05) -> None:
        role = name.split(".")[-2]
        qtype = (role_types or {}).get(role, qtype)
        stored, values = random_tensor(qtype, shape, rng, std)
        tm.weights[name] = values
        tm.types[name] = qtype.name
        if qtype in (QT.F32, QT.F16):
            w.add_tensor(name, stored)
        else:
            w.add_tensor(name, stored, raw_shape=stored.shape, raw_dtype=qtype)

    def put_vec(name: str, n: int, mean: float, std: float) -> None:
        v = (mean + rng.standard_normal(n) * std).astype(np.float32)
        tm.weights[name] = v
        w.add_tensor(name, v)

    put("token_embd.weight", embd_type or weight_type, (n_vocab, n_embd), std=0.5)
    put_vec("output_norm.weight", n_embd, 1.0, 0.1)
    if not tied:
        put("output.weight", weight_type, (n_vocab, n_embd), std=0.05)
    if llama3_rope:
        inv = llama3_inv_freq(head_dim, tm.rope_theta, factor=8.0, low=1.0, high=4.0, orig_ctx=64)
        base_inv = 1.0 / tm.rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        tm.rope_freqs = (base_inv / inv).astype(np.float32)
        tm.hf_inv_freq = inv
        w.add_tensor("rope_freqs.weight", tm.rope_freqs)
    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    for i in range(n_layer):
        p = f"blk.{i}."
        put_vec(p + "attn_norm.weight", n_embd, 1.0, 0.1)
        put(p + "attn_q.weight", weight_type, (q_dim, n_embd))
        put(p + "attn_k.weight", weight_type, (kv_dim, n_embd))
        put(p + "attn_v.weight", weight_type, (kv_dim, n_embd))
        put(p + "attn_output.weight", weight_type, (n_embd, q_dim))
        if arch == "qwen2":
            put_vec(p + "attn_q.bias", q_dim, 0.0, 0.5)
            put_vec(p + "attn_k.bias", kv_dim, 0.0, 0.5)
            put_vec(p + "attn_v.bias", kv_dim, 0.0, 0.1)
        put_vec(p + "ffn_norm.weight", n_embd, 1.0, 0.1)
        put(p + "ffn_gate.weight", weight_type, (n_ff, n_embd))
        put(p + "ffn_up.weight", weight_type, (n_ff, n_embd))
        put(p + "ffn_down.weight", weight_type, (n_embd, n_ff))
    for key in drop_keys:  # for tests of files that lack required metadata
        for shard in w.kv_data:
            shard.pop(key, None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tm


def rewrite_gguf(
    src: Path,
    dst: Path,
    tensor_fn: Callable[[gguf.ReaderTensor], tuple[np.ndarray, QT] | None],
    *,
    kv: dict[str, object] | None = None,
) -> None:
    """Copy a GGUF file with every tensor passed through tensor_fn.

    tensor_fn returns the data to write and its type (the data as stored: bytes
    for block types, values for float types), or None to leave the tensor out.
    kv replaces the values of existing metadata keys, keeping their types.
    """
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        value = (kv or {}).get(f.name, f.contents())
        w.add_key_value(f.name, value, f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
    for t in r.tensors:
        out = tensor_fn(t)
        if out is not None:
            data, qtype = out
            w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def prefill_then_decode(model: Any, tokens: list[int], n_prefill: int) -> np.ndarray:
    """Logits for every position of a Model: one batched call, then one call per token."""
    model.reset()
    out = [model.forward(tokens[:n_prefill], 0, logits_all=True)]
    for i in range(n_prefill, len(tokens)):
        out.append(model.forward([tokens[i]], i)[None, :])
    return np.concatenate(out)


def c_model_config(**kw: Any) -> object:
    """A valid lb_model_config of a one-layer model for the C API, with fields overridden."""
    from lowbit.core.native import ffi

    cfg = ffi.new("lb_model_config *")
    base = dict(
        arch=0, n_vocab=32, n_embd=64, n_layer=1, n_head=2, n_head_kv=1, head_dim=32, n_ff=64,
        rms_eps=1e-5, rope_kind=0, rope_dim=32, rope_theta=10000.0, rope_pos_scale=1.0, n_ctx=16,
        n_batch=8, n_threads=1, kv_type=1,
    )  # fmt: skip
    base.update(kw)
    for k, v in base.items():
        setattr(cfg, k, v)
    return cfg
