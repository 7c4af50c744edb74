"""An independent torch implementation of the llama / qwen2 forward pass.

It follows the Hugging Face conventions, not GGUF's: for ``llama`` the Q and K
weights are first un-permuted back to Hugging Face's row order (GGUF files
store them permuted so that RoPE rotates adjacent pairs), and RoPE then
rotates halves (``rotate_half``). Agreement with Lowbit therefore also checks
that the GGUF conventions are handled right.

Computation is float64. Optional emulations model what Lowbit documents
about its numerics, so tight tolerances can be used:
- ``kv_fp16``: keys and values are rounded to float16 (the F16 KV cache);
- ``kv_q8_0``: keys, values and the queries that meet the keys are rounded
  through Q8_0 blocks of 32, each head on its own, in GGUF's element order
  (the Q8_0 KV cache);
- ``act_quant``: a weight's input is rounded the way Lowbit encodes activations
  for integer dot products (Q8_0/Q8_1 blocks of 32, Q8_K blocks of 256, and
  for Q8_0 weights Q16: 16-bit quants in blocks of 32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

ACT_FORMAT = {  # weight type name -> activation format Lowbit uses with it
    "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q16", "IQ4_NL": "Q8_0",
    "Q4_1": "Q8_1", "Q5_1": "Q8_1",
    "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K",
    "F32": None, "F16": None, "BF16": None,
}  # fmt: skip


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def fake_quant(x: torch.Tensor, fmt: str | None) -> torch.Tensor:
    """x rounded through an activation format, back in float64."""
    if fmt is None:
        return x
    shape = x.shape
    x32 = x.to(torch.float32)
    if fmt in ("Q8_0", "Q8_1"):
        b = x32.reshape(-1, 32)
        amax = b.abs().amax(dim=1, keepdim=True)
        d = amax / 127
        inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
        q = _round_half_away(b * inv)
        d16 = d.to(torch.float16).to(torch.float32)
        return (q.to(torch.float64) * d16.to(torch.float64)).reshape(shape)
    if fmt == "Q16":
        b = x32.reshape(-1, 32)
        amax = b.abs().amax(dim=1, keepdim=True)
        d = torch.where(amax >= 1e-30, amax / 32767, torch.zeros_like(amax))
        inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
        q = _round_half_away(b * inv)
        return (q.to(torch.float64) * d.to(torch.float64)).reshape(shape)
    if fmt == "Q8_K":
        b = x32.reshape(-1, 256)
        idx = b.abs().argmax(dim=1, keepdim=True)
        mx = torch.gather(b, 1, idx)
        iscale = torch.where(mx != 0, -127.0 / mx, torch.zeros_like(mx))
        q = torch.clamp(_round_half_away(b * iscale), max=127)
        d = torch.where(iscale != 0, 1.0 / iscale, torch.zeros_like(iscale))
        return (q.to(torch.float64) * d.to(torch.float64)).reshape(shape)
    raise ValueError(fmt)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of the row permutation GGUF llama files apply to Q and K."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(
    weights: dict[str, np.ndarray],
    tokens: list[int],
    *,
    arch: str,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    rms_eps: float,
    rope_theta: float,
    inv_freq: np.ndarray | None = None,
    weight_types: dict[str, str] | None = None,
    kv_fp16: bool = False,
    kv_q8_0: bool = False,
    act_quant: bool = False,
) -> np.ndarray:
    """Logits [len(tokens), vocab] of a causal forward pass over all tokens."""
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    wt = weight_types or {}

    def linear(name: str, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        fmt = ACT_FORMAT.get(wt.get(name, "F32")) if act_quant else None
        return fake_quant(x, fmt) @ (t(weights[name]) if w is None else w).T

    def rmsnorm(x: torch.Tensor, w: np.ndarray) -> torch.Tensor:
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + rms_eps) * t(w)

    emb = t(weights["token_embd.weight"])
    n_embd = emb.shape[1]
    head_dim = n_embd // n_head
    seq = len(tokens)
    x = emb[torch.tensor(tokens)]
    if inv_freq is None:
        inv_freq = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = torch.arange(seq, dtype=torch.float64)[:, None] * t(inv_freq)[None, :]
    cos = torch.cat((ang.cos(), ang.cos()), -1)[:, None, :]
    sin = torch.cat((ang.sin(), ang.sin()), -1)[:, None, :]
    mask = torch.full((seq, seq), float("-inf"), dtype=torch.float64).triu(1)
    group = n_head // n_head_kv
    round16: Callable[[torch.Tensor], torch.Tensor] = (
        (lambda a: a.to(torch.float16).to(torch.float64)) if kv_fp16 else (lambda a: a)
    )

    def q8_heads(a: torch.Tensor, permuted: bool) -> torch.Tensor:
        """a [seq, heads, head_dim] through Q8_0 blocks of each head as GGUF orders it."""
        if not kv_q8_0:
            return a
        s_, h_, d_ = a.shape
        if not permuted:
            return fake_quant(a.contiguous(), "Q8_0")
        # Hugging Face index j * d/2 + i is GGUF's 2i + j (see unpermute_qk)
        g = a.reshape(s_, h_, 2, d_ // 2).transpose(-1, -2).reshape(s_, h_, d_)
        g = fake_quant(g.contiguous(), "Q8_0")
        return g.reshape(s_, h_, d_ // 2, 2).transpose(-1, -2).reshape(s_, h_, d_)

    for i in range(n_layer):
        p = f"blk.{i}."
        h = rmsnorm(x, weights[p + "attn_norm.weight"])
        wq, wk = weights[p + "attn_q.weight"], weights[p + "attn_k.weight"]
        if arch == "llama":
            wq, wk = unpermute_qk(wq, n_head), unpermute_qk(wk, n_head_kv)
        q = linear(p + "attn_q.weight", h, t(wq))
        k = linear(p + "attn_k.weight", h, t(wk))
        v = linear(p + "attn_v.weight", h)
        if arch == "qwen2":
            q = q + t(weights[p + "attn_q.bias"])
            k = k + t(weights[p + "attn_k.bias"])
            v = v + t(weights[p + "attn_v.bias"])
        q = q.view(seq, n_head, head_dim)
        k = k.view(seq, n_head_kv, head_dim)
        v = v.view(seq, n_head_kv, head_dim)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = round16(k), round16(v)
        q, k, v = q8_heads(q, arch == "llama"), q8_heads(k, arch == "llama"), q8_heads(v, False)
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        att = torch.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + mask
        att = torch.softmax(att, dim=-1)
        o = torch.einsum("hqk,khd->qhd", att, v).reshape(seq, n_head * head_dim)
        x = x + linear(p + "attn_output.weight", o)
        h = rmsnorm(x, weights[p + "ffn_norm.weight"])
        g = linear(p + "ffn_gate.weight", h)
        u = linear(p + "ffn_up.weight", h)
        x = x + linear(p + "ffn_down.weight", torch.nn.functional.silu(g) * u)

    h = rmsnorm(x, weights["output_norm.weight"])
    out_name = "output.weight" if "output.weight" in weights else "token_embd.weight"
    return linear(out_name, h).numpy()


def forward_tiny(tm: Any, tokens: list[int], **kw: Any) -> np.ndarray:
    """:func:`forward` with the shape and weights of a tests.tiny_models.TinyModel."""
    return forward(
        tm.weights,
        tokens,
        arch=tm.arch,
        n_layer=tm.n_layer,
        n_head=tm.n_head,
        n_head_kv=tm.n_head_kv,
        rms_eps=tm.rms_eps,
        rope_theta=tm.rope_theta,
        inv_freq=tm.hf_inv_freq,
        **kw,
    )
