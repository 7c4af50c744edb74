"""The Q8_0 KV cache: keys and values kept as GGML Q8_0 blocks, next to the F16 cache.

With ``kv_type="q8_0"`` each head's slice of a key or value row is encoded to
Q8_0 when written; attention encodes each query head to Q8_0 too, takes integer
dot products with the keys, and sums the decoded values weighted by the softmax.
The reference (tests/torch_ref.py, ``kv_q8_0``) rounds queries, keys and values
through the same blocks, in GGUF's element order, and computes in float64.

Tolerances. On float32 weights nothing else is rounded, so Lowbit and that
reference differ only by float32 arithmetic, except where a value lands within
float noise of a rounding boundary of the 8-bit encoding and moves by a whole
step; such a step then reaches every later position. The checks therefore
measure the difference from the reference against the effect of the Q8_0
rounding itself (the reference with the Q8_0 cache against the reference with
the F16 cache): what is left must be a small fraction of it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit.core.errors import UnsupportedModelError
from lowbit.core.fit import estimate_memory
from lowbit.core.gguf_file import open_gguf
from lowbit.core.model import Model, check_kv_type, read_hparams
from lowbit.core.native import ffi, lib
from tests import torch_ref
from tests.test_kernels_isa import AVAILABLE, assert_same_floats, current_isa, on_each_path, set_isa
from tests.tiny_models import TinyModel, c_model_config, make_tiny_model, prefill_then_decode


@pytest.fixture(autouse=True)
def _restore_isa() -> Iterator[None]:
    before = current_isa()
    yield
    assert set_isa(before) == 0


def _run(tm: TinyModel, tokens: list[int], kv_type: str, n_prefill: int = 24) -> np.ndarray:
    with Model.load(tm.path, n_ctx=64, n_threads=2, kv_type=kv_type) as m:
        assert m.kv_type == kv_type.lower() and m.describe()["kv_type"] == kv_type.lower()
        return prefill_then_decode(m, tokens, n_prefill)


def _centered(a: np.ndarray) -> np.ndarray:
    return a - a.mean(axis=1, keepdims=True)  # softmax ignores a constant shift


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(_centered(a) - _centered(b))


# ---- the forward pass against the reference ----------------------------------------


@pytest.mark.parametrize(
    ("arch", "n_head", "n_head_kv"),
    [("llama", 4, 2), ("qwen2", 4, 2), ("llama", 8, 2), ("llama", 2, 1)],
    ids=["llama-hd64", "qwen2-hd64", "llama-hd32", "llama-hd128"],
)
def test_q8_0_cache_matches_reference(tmp_path: Path, arch: str, n_head: int, n_head_kv: int) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", arch=arch, n_head=n_head, n_head_kv=n_head_kv)
    tokens = [int(t) for t in np.random.default_rng(11).integers(0, 261, size=40)]
    got = _run(tm, tokens, "Q8_0")  # the name in any case
    got_f16 = _run(tm, tokens, "f16")
    ideal = torch_ref.forward_tiny(tm, tokens, kv_q8_0=True)
    ideal_f16 = torch_ref.forward_tiny(tm, tokens, kv_fp16=True)
    effect = _diff(ideal, ideal_f16)  # what the Q8_0 rounding moves, beyond F16's
    spread = float(ideal.std())
    assert effect.mean() > 1e-4 * spread, "the reference's Q8_0 rounding should change the logits"

    # Without a boundary case the error is about 1e-4 of the effect; one such case
    # has been seen to leave 3% on average and 9% at worst.
    err = _diff(got, ideal)
    assert err.mean() <= 0.05 * effect.mean(), f"mean error {err.mean():.3g}, Q8_0 effect {effect.mean():.3g}"
    assert err.max() <= 0.25 * effect.max(), f"max error {err.max():.3g}, Q8_0 effect {effect.max():.3g}"

    # against Lowbit's own F16 cache: the difference the reference predicts, and small
    change = _diff(got, got_f16)
    assert 0.5 * effect.mean() <= change.mean() <= 2.0 * effect.mean()
    assert change.max() <= 0.05 * spread
    assert (got.argmax(axis=1) == got_f16.argmax(axis=1)).mean() >= 0.95


def test_q8_0_cache_batching_threads_and_rewind(tmp_path: Path) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", weight_type=QT.Q4_K, seed=3)
    tokens = [int(t) for t in np.random.default_rng(4).integers(0, 261, size=50)]
    with Model.load(tm.path, n_ctx=64, n_threads=1, n_batch=64, kv_type="q8_0") as one:
        a = one.forward(tokens, 0, logits_all=True)
    with Model.load(tm.path, n_ctx=64, n_threads=2, n_batch=7, kv_type="q8_0") as many:
        b = many.forward(tokens, 0, logits_all=True)
        c = many.forward(tokens[30:], 30, logits_all=True)
        d = prefill_then_decode(many, tokens, 20)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[30:], c)
    np.testing.assert_array_equal(a, d)


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_chunked_attention_is_the_same_however_split(tmp_path: Path, kv_type: str) -> None:
    """Past 128 positions attention goes chunk by chunk. A prompt's task joins its
    queries' chunks itself; a decoding step gives each chunk its own task and joins
    them afterwards. Both, on any thread count and batch size, give the same floats.
    Float32 weights take float32 inputs, so that no 8-bit encoding of the attention
    output can hide a difference."""
    tm = make_tiny_model(tmp_path / "m.gguf", weight_type=QT.F32, seed=3)
    tokens = [int(t) for t in np.random.default_rng(9).integers(0, 261, size=300)]
    with Model.load(tm.path, n_ctx=320, n_threads=1, n_batch=512, kv_type=kv_type) as one:
        a = one.forward(tokens, 0, logits_all=True)
    with Model.load(tm.path, n_ctx=320, n_threads=3, n_batch=37, kv_type=kv_type) as many:
        b = many.forward(tokens, 0, logits_all=True)
        c = prefill_then_decode(many, tokens, 100)
    with Model.load(tm.path, n_ctx=320, n_threads=2, kv_type=kv_type) as two:
        d = prefill_then_decode(two, tokens, 250)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(a, d)


# ---- every instruction-set path ------------------------------------------------------


def _greedy(m: Model, prompt: list[int], n: int) -> list[int]:
    m.reset()
    seq = list(prompt)
    logits = m.forward(seq, 0)
    for _ in range(n):
        seq.append(int(logits.argmax()))
        logits = m.forward([seq[-1]], len(seq) - 1)
    return seq[len(prompt) :]


@pytest.mark.parametrize(
    ("qtype", "n_embd", "n_head"),
    [(QT.Q4_K, 256, 4), (QT.Q8_0, 256, 8), (QT.Q8_0, 192, 2), (QT.Q4_0, 256, 2)],
    ids=["Q4_K-hd64", "Q8_0-hd32", "Q8_0-hd96", "Q4_0-hd128"],
)
def test_q8_0_cache_is_identical_on_every_path(tmp_path: Path, qtype: QT, n_embd: int, n_head: int) -> None:
    # Quantized weights: the matrix kernels agree bit for bit, so any difference would be attention's.
    tm = make_tiny_model(
        tmp_path / "m.gguf", weight_type=qtype, seed=int(qtype), n_embd=n_embd, n_head=n_head, n_head_kv=2
    )
    tokens = [int(t) for t in np.random.default_rng(5).integers(0, 261, size=37)]  # 8k + 5 keys at the end
    with Model.load(tm.path, n_ctx=64, n_threads=2, kv_type="q8_0") as m:
        logits = on_each_path(lambda: prefill_then_decode(m, tokens, 19))
        generated = on_each_path(lambda: _greedy(m, tokens[:9], 24))
    for p in AVAILABLE:
        assert_same_floats(logits[p], logits["scalar"], f"{qtype.name} n_embd={n_embd} {p}")
        assert generated[p] == generated["scalar"], p


@pytest.mark.parametrize(
    ("n_embd", "n_head", "n_head_kv"),
    [(160, 8, 2), (256, 4, 1), (192, 2, 1), (288, 1, 1)],
    ids=["hd20-group4", "hd64-group4", "hd96-group2", "hd288"],
)
def test_f16_cache_tiles_are_identical_on_every_path(
    tmp_path: Path, n_embd: int, n_head: int, n_head_kv: int
) -> None:
    """Attention goes in tiles of query heads and tokens that share each converted key
    and value, or head by head and token by token when the tiles are fewer than the
    threads. Both give the scalar path's floats, whatever the head size (20 and 288
    take the key-by-key kernels)."""
    tm = make_tiny_model(
        tmp_path / "m.gguf", weight_type=QT.Q8_0, seed=3, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv
    )
    tokens = [int(t) for t in np.random.default_rng(8).integers(0, 261, size=41)]
    with Model.load(tm.path, n_ctx=64, n_threads=1) as m:  # one thread: every call goes in tiles
        tiles = on_each_path(lambda: prefill_then_decode(m, tokens, 35))
        tiles_stepwise = on_each_path(lambda: prefill_then_decode(m, tokens, 1))
    with Model.load(tm.path, n_ctx=64, n_threads=4) as m:  # one token makes 1 or 2 tiles: head by head
        heads = on_each_path(lambda: prefill_then_decode(m, tokens, 1))
    want = heads["scalar"]
    for p in AVAILABLE:
        what = f"n_embd={n_embd} n_head={n_head} {p}"
        assert_same_floats(tiles[p], want, f"{what} tiles")
        assert_same_floats(tiles_stepwise[p], want, f"{what} tiles, one token at a time")
        assert_same_floats(heads[p], want, f"{what} head by head")


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_chunked_attention_is_identical_on_every_path(tmp_path: Path, kv_type: str) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", weight_type=QT.Q8_0, seed=5)
    tokens = [int(t) for t in np.random.default_rng(10).integers(0, 261, size=280)]
    with Model.load(tm.path, n_ctx=300, n_threads=2, kv_type=kv_type) as m:
        got = on_each_path(lambda: prefill_then_decode(m, tokens, 150))
    for p in AVAILABLE:
        assert_same_floats(got[p], got["scalar"], f"{kv_type} cache, three chunks, {p}")


def test_smollm2_q8_0_cache_on_every_path(smollm2_gguf: Path) -> None:
    with Model.load(smollm2_gguf, n_ctx=128, n_threads=2, kv_type="q8_0") as m:
        prompt = m.tokenizer.encode("The capital of France is")
        generated = on_each_path(lambda: _greedy(m, prompt, 16))
    for p in AVAILABLE:
        assert generated[p] == generated["scalar"], p


# ---- memory ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_ctx", [16, 300])
@pytest.mark.parametrize("n_threads", [1, 3])
def test_q8_0_cache_memory_matches_the_library(tmp_path: Path, n_ctx: int, n_threads: int) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", n_layer=3)
    est = estimate_memory(tm.path, n_ctx=n_ctx, n_threads=n_threads, cache_type="q8_0")
    f16 = estimate_memory(tm.path, n_ctx=n_ctx, n_threads=n_threads, cache_type="f16")
    with Model.load(tm.path, n_ctx=n_ctx, n_threads=n_threads, kv_type="q8_0") as m:
        assert est.kv_bytes + est.scratch_bytes == m.stats().state_bytes
    assert est.kv_bytes * 32 == f16.kv_bytes * 17  # 34 bytes per 32 values against 64
    hp = read_hparams(open_gguf(tm.path))
    assert est.kv_bytes == n_ctx * hp.kv_bytes_per_token("Q8_0")
    assert hp.kv_bytes_per_token() == hp.kv_bytes_per_token("f16") == 2 * 3 * 2 * 64 * 2


# ---- refused settings ------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["q4_0", "f32", "", "q8", "Q8_0 ", None, 8])
def test_bad_kv_type_strings_are_refused(tmp_path: Path, bad: object) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="KV cache type"):
        Model.load(tm.path, n_ctx=16, n_threads=1, kv_type=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="KV cache type"):
        check_kv_type(bad)  # type: ignore[arg-type]
    assert check_kv_type("Q8_0") == "q8_0" and check_kv_type("F16") == "f16"


def test_q8_0_cache_needs_whole_blocks_per_head(tmp_path: Path) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", n_head=16, n_head_kv=4)  # head_dim 16
    with pytest.raises(UnsupportedModelError, match="multiple of 32"):
        Model.load(tm.path, n_ctx=16, n_threads=1, kv_type="q8_0")
    with Model.load(tm.path, n_ctx=16, n_threads=1) as m:  # F16 takes any even head size
        assert m.forward([1, 2, 3], 0).shape == (m.n_vocab,)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(head_dim=48, rope_dim=48, n_embd=96), "multiple of 32"),
        (dict(head_dim=16, rope_dim=16, n_embd=32), "multiple of 32"),
        (dict(kv_type=2), "not supported"),  # Q4_0
        (dict(kv_type=0), "not supported"),  # F32
    ],
)
def test_c_refuses_unsupported_kv_caches(kw: dict, message: str) -> None:
    out = ffi.new("lb_model **")
    assert lib.lb_model_create(c_model_config(**{"kv_type": 8, **kw}), out) == 2  # LB_ERR_UNSUPPORTED
    assert out[0] == ffi.NULL
    assert message in ffi.string(lib.lb_last_error()).decode()
    assert lib.lb_model_create(c_model_config(kv_type=8), out) == 0  # head_dim 32 with Q8_0 is fine
    lib.lb_model_free(out[0])


# ---- the command line -------------------------------------------------------------------


def test_cli_kv_type_option(tmp_path: Path) -> None:
    from lowbit.core.cli import build_parser

    parser = build_parser()
    for cmd in ("generate", "chat", "bench"):
        extra = ["--prompt", "x"] if cmd == "generate" else []
        assert parser.parse_args([cmd, "m.gguf", *extra]).kv_type == "f16"
        assert parser.parse_args([cmd, "m.gguf", *extra, "--kv-type", "Q8_0"]).kv_type == "q8_0"
    tm = make_tiny_model(tmp_path / "m.gguf")
    r = subprocess.run(
        [sys.executable, "-m", "lowbit.core.cli", "generate", str(tm.path), "--prompt", "the", "--max-tokens",
         "4", "--json", "--threads", "1", "--ctx", "32", "--kv-type", "q8_0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert '"kv_type": "q8_0"' in r.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "lowbit.core.cli", "generate", str(tm.path), "--prompt", "x",
         "--kv-type", "q4_0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "--kv-type" in bad.stderr
