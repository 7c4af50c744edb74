"""Every instruction-set path of the C kernels against the scalar reference.

The library picks a path (scalar, avx2, avx512, neon) at run time; each test
here runs on every path this machine can execute, switching with lb_set_isa.

What must agree, and how closely:
- Quantized weight types: bit for bit. Every SIMD kernel sums each block's
  integer products exactly and then repeats the reference's float operations
  in the reference's order (see x86_simd.h), so the dot products, and hence
  whole-model logits, are the same floats on every path.
- F32/F16/BF16 weights: the SIMD kernels sum in float with FMA in their own
  order, the reference in double; they agree to 1e-5 of sum |w_i x_i|.
- The Q8_0/Q8_1/Q8_K/Q16 activation encoders: the same bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit.core.model import Model
from lowbit.core.native import ffi, lib
from tests.test_quants import Q16, quantize, random_quant_blocks, row_size, type_name, vec_dot
from tests.tiny_models import WEIGHT_TYPES, make_tiny_model, prefill_then_decode

PATHS = ("avx512", "avx2", "neon", "scalar")  # best first, as the library ranks them
FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)
QUANT_TYPES = [t for t in WEIGHT_TYPES if t not in FLOAT_TYPES]


def current_isa() -> str:
    return ffi.string(lib.lb_isa()).decode()


def set_isa(name: str) -> int:
    return lib.lb_set_isa(name.encode())


def available_paths() -> list[str]:
    before = current_isa()
    ok = [p for p in PATHS if set_isa(p) == 0]
    assert set_isa(before) == 0
    return ok


AVAILABLE = available_paths()
SIMD = [p for p in AVAILABLE if p != "scalar"]


@pytest.fixture(autouse=True)
def _restore_isa() -> Iterator[None]:
    before = current_isa()
    yield
    assert set_isa(before) == 0


def on_each_path(fn, paths=AVAILABLE) -> dict[str, object]:
    out = {}
    for p in paths:
        assert set_isa(p) == 0, p
        out[p] = fn()
    return out


def assert_same_floats(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal bit patterns, except that any NaN matches any NaN."""
    g, w = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert g.shape == w.shape
    both_nan = np.isnan(g) & np.isnan(w)
    diff = (g.view(np.uint32) != w.view(np.uint32)) & ~both_nan
    if diff.any():
        i = np.flatnonzero(diff.ravel())
        k = i[0]
        got_k, want_k = g.ravel()[k], w.ravel()[k]
        raise AssertionError(
            f"{what}: {i.size} of {g.size} values differ, first at {k}: {got_k!r} vs {want_k!r}"
        )


# ---- the path API ----------------------------------------------------------------


def test_paths_api() -> None:
    assert "scalar" in AVAILABLE
    assert current_isa() in PATHS
    assert set_isa("auto") == 0
    best = current_isa()
    assert best == AVAILABLE[0]
    assert set_isa("sse9") == 1  # LB_ERR_INVALID_ARGUMENT
    for p in PATHS:
        if p not in AVAILABLE:
            assert set_isa(p) == 2  # LB_ERR_UNSUPPORTED, and the path stays
            assert current_isa() == best
    assert lib.lb_set_isa(ffi.NULL) == 0 and current_isa() == best


def _isa_in_subprocess(value: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LOWBIT_ISA=value)
    code = "from lowbit.core import native; print(native.isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)


@pytest.mark.parametrize("path", AVAILABLE)
def test_env_selects_path(path: str) -> None:
    r = _isa_in_subprocess(path)
    assert r.stdout.strip() == path
    assert r.stderr == ""


@pytest.mark.parametrize("value", ["sse9", *[p for p in PATHS if p not in AVAILABLE]])
def test_env_falls_back_to_best(value: str) -> None:
    r = _isa_in_subprocess(value)
    assert r.stdout.strip() == AVAILABLE[0]
    assert "LOWBIT_ISA" in r.stderr


# ---- dot products ------------------------------------------------------------------


def _block_elems(t: QT) -> int:
    return 256 if t in (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K) else 32


def _misaligned(data: np.ndarray, offset: int) -> np.ndarray:
    """data copied to an address that is `offset` bytes past a 64-byte boundary."""
    raw = np.zeros(data.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    view = raw[start : start + data.nbytes]
    view[:] = data.view(np.uint8).ravel()
    return view


@pytest.mark.parametrize("path", SIMD or ["none"])
@pytest.mark.parametrize("t", QUANT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", ["moderate", "random", "all_ones", "zero_scale"])
@pytest.mark.parametrize("rows", [5, 24], ids=["rows5", "rows24"])
def test_quantized_vec_dot_is_exact(path: str, t: QT, case: str, rows: int) -> None:
    # 24 rows: Q4_0, Q4_1, Q5_0, IQ4_NL and Q8_0 go through the repacked 8-row kernels on the
    # SIMD paths (as lb_model_set_tensor repacks them), AVX-512 with a pair of groups and
    # one alone; the scalar path never repacks
    if path == "none":
        pytest.skip("no SIMD path on this CPU")
    rng = np.random.default_rng([int(t), len(case), rows])
    for n_blocks in (1, 3, 4, 5, 8, 13, 48):  # tails of every length after groups of 4
        n = n_blocks * _block_elems(t)
        w = random_quant_blocks(rng, int(t), rows * n_blocks, case)
        w = _misaligned(w, 2)  # rows of block types need not be 32-byte aligned
        x = (rng.standard_normal(n) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
        out = on_each_path(lambda w=w, x=x: vec_dot(int(t), w, rows, x), ["scalar", path])
        assert_same_floats(out[path], out["scalar"], f"{t.name} {path} n={n}")


@pytest.mark.parametrize("path", SIMD or ["none"])
@pytest.mark.parametrize("t", FLOAT_TYPES, ids=lambda t: t.name)
def test_float_vec_dot_is_close(path: str, t: QT) -> None:
    if path == "none":
        pytest.skip("no SIMD path on this CPU")
    rng = np.random.default_rng(int(t))
    rows = 4
    for n in (1, 7, 8, 15, 16, 17, 33, 576, 1537):
        wf = (rng.standard_normal((rows, n)) * 0.1).astype(np.float32)
        if t == QT.F16:
            w = wf.astype(np.float16)
            wv = w.astype(np.float64)
        elif t == QT.BF16:
            w = (wf.view(np.uint32) >> 16).astype(np.uint16)
            wv = (w.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            w, wv = wf, wf.astype(np.float64)
        x = rng.standard_normal(n).astype(np.float32)
        wm = _misaligned(np.ascontiguousarray(w), 2 if t != QT.F32 else 4)
        out = on_each_path(lambda wm=wm, x=x: vec_dot(int(t), wm, rows, x), ["scalar", path])
        scale = np.abs(wv * x.astype(np.float64)).sum(axis=1)
        assert np.all(np.abs(out[path] - out["scalar"]) <= 1e-5 * scale + 1e-30), f"{t.name} n={n}"


# ---- activation encoders -----------------------------------------------------------


def _encoder_inputs(rng: np.random.Generator, block: int) -> dict[str, np.ndarray]:
    n = 16 * block
    ties = rng.integers(-126, 126, size=n).astype(np.float32) + 0.5  # exact x.5 after scaling by 1
    ties[::block] = 127.0  # max |x| = 127: scale exactly 1 (q8_0/q8_1), -1 for the first element (q8_K)
    ties[1::block] = -127.0
    return {
        "normal": rng.standard_normal(n).astype(np.float32),
        "outliers": (rng.standard_normal(n) * np.where(rng.random(n) < 0.01, 300.0, 1.0)).astype(np.float32),
        "ties": ties,
        "zeros": np.zeros(n, np.float32),
        "constant": np.full(n, -3.25, np.float32),
        "tiny": (rng.standard_normal(n) * 1e-30).astype(np.float32),
        "subnormal": (rng.standard_normal(n) * 1e-40).astype(np.float32),
        "mixed_zero_blocks": np.where(np.arange(n) // block % 2 == 0, 0.0, rng.standard_normal(n)).astype(
            np.float32
        ),
        # large magnitudes in +-pairs, so q8_1's fp16 block sum stays in range
        "large": np.repeat(np.abs(rng.standard_normal(n // 2)) * 1e5, 2).astype(np.float32)
        * np.tile([1, -1], n // 2),
    }


# ---- softmax and SwiGLU: the library's own exp -------------------------------------


def _softmax(x: np.ndarray, scale: float) -> np.ndarray:
    y = np.array(x, np.float32)
    assert lib.lb_softmax(y.size, ffi.from_buffer("float[]", y), scale) == 0
    return y


def _swiglu(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    y = np.array(g, np.float32)
    uc = np.ascontiguousarray(u, np.float32)
    assert lib.lb_swiglu(y.size, ffi.from_buffer("float[]", y), ffi.from_buffer("float[]", uc)) == 0
    return y


# Lengths around the 8 lanes, and a score row of a long context.
SOFTMAX_LENGTHS = [1, 3, 8, 13, 64, 333, 4099]


@pytest.mark.parametrize("n", SOFTMAX_LENGTHS)
def test_softmax_matches_float64_and_agrees_on_every_path(n: int) -> None:
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 40).astype(np.float32)  # some exps fall below exp(-87)
    scale = 0.125  # a power of two: x * scale is exact, so float64 sees the same inputs
    out = on_each_path(lambda: _softmax(x, scale))
    for p in AVAILABLE:
        assert_same_floats(out[p], out["scalar"], f"softmax n={n} {p}")
    z = x * np.float32(scale)
    # x - max rounded to float as the library rounds it: that rounding alone
    # moves exp by up to |x - max| * 2^-24, which no float softmax avoids
    want = np.exp((z - z.max()).astype(np.float64))
    want /= want.sum()
    # exp within 2 ulp, each of the 8 partial sums within n/8 ulp, then the
    # reciprocal and the product: (4 + n/8) ulp; values below exp(-87) are 0
    rtol = (4 + n / 8) * 2.0**-23
    np.testing.assert_allclose(out["scalar"], want, rtol=rtol, atol=1e-37)


def test_softmax_special_values_agree_on_every_path() -> None:
    cases = {
        "underflow": np.array([0.0, -100.0, -700.0, -1e30], np.float32),
        "minus_inf": np.array([1.0, -np.inf, 2.0, -np.inf, 0.5, 3.0, -np.inf, 1.0, 2.5], np.float32),
        "nan": np.array([1.0, np.nan, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0], np.float32),
        "zeros": np.array([-0.0, 0.0] * 9, np.float32),
    }
    for name, x in cases.items():
        out = on_each_path(lambda x=x: _softmax(x, 1.0))
        for p in AVAILABLE:
            assert_same_floats(out[p], out["scalar"], f"softmax {name} {p}")
    np.testing.assert_array_equal(_softmax(cases["zeros"], 1.0), np.full(18, 1 / 18, np.float32))
    assert np.array_equal(_softmax(cases["underflow"], 1.0), [1.0, 0.0, 0.0, 0.0])
    want = np.exp(cases["minus_inf"].astype(np.float64) - 3.0)
    np.testing.assert_allclose(_softmax(cases["minus_inf"], 1.0), want / want.sum(), rtol=1e-6, atol=0)
    assert np.isnan(_softmax(cases["nan"], 1.0)).all()  # the NaN reaches the sum, so every output


def test_swiglu_matches_float64_and_agrees_on_every_path() -> None:
    rng = np.random.default_rng(11)
    g = np.concatenate(
        [
            np.linspace(-120, 120, 2001, dtype=np.float32),  # past both ends of exp's range
            (rng.standard_normal(997) * 4).astype(np.float32),
            np.array([0.0, -0.0, 87.0, -87.0, 88.0, -88.0, np.inf, -np.inf, np.nan], np.float32),
        ]
    )
    u = rng.uniform(-2, 2, g.size).astype(np.float32)
    out = on_each_path(lambda: _swiglu(g, u))
    for p in AVAILABLE:
        assert_same_floats(out[p], out["scalar"], f"swiglu {p}")
    fin = np.isfinite(g)
    g64 = g[fin].astype(np.float64)
    with np.errstate(over="ignore"):
        want = g64 / (1.0 + np.exp(-g64)) * u[fin]
    # exp within 2 ulp, then an addition, a division and a product: 4 ulp; where
    # exp gives 0 or inf (beyond exp(+-87)), the true value is within 1e-36 of it
    np.testing.assert_allclose(out["scalar"][fin], want, rtol=4 * 2.0**-23, atol=1e-36)
    inf, minus_inf, nan = out["scalar"][~fin]
    assert inf == np.inf * np.sign(u[~fin][0])  # inf * sigmoid(inf) * u
    assert np.isnan(minus_inf) and np.isnan(nan)  # -inf / (1 + inf); NaN


@pytest.mark.parametrize("path", SIMD or ["none"])
@pytest.mark.parametrize("t", [QT.Q8_0, QT.Q8_1, QT.Q8_K, Q16], ids=type_name)
def test_activation_encoders_are_byte_identical(path: str, t: int) -> None:
    if path == "none":
        pytest.skip("no SIMD path on this CPU")
    block = 256 if t == QT.Q8_K else 32
    rng = np.random.default_rng(int(t))
    inputs = _encoder_inputs(rng, block)
    if t == Q16:  # ties at Q16's scale: max |x| = 32767 makes d exactly 1
        ties = rng.integers(-32766, 32766, size=16 * block).astype(np.float32) + 0.5
        ties[::block] = 32767.0
        inputs["ties"] = ties
    for name, x in inputs.items():
        out = on_each_path(lambda x=x: quantize(int(t), x), ["scalar", path])
        assert out[path].nbytes == row_size(int(t), x.size)
        if not np.array_equal(out[path], out["scalar"]):
            per = row_size(int(t), block)
            bad = np.flatnonzero((out[path] != out["scalar"]).reshape(-1, per).any(axis=1))
            raise AssertionError(f"{type_name(t)} {path} {name}: blocks {bad[:8].tolist()} differ")


# ---- whole models: multi-token kernels and every weight type -----------------------


def _decode_only(m: Model, tokens: list[int]) -> np.ndarray:
    m.reset()
    return np.concatenate([m.forward([tok], i)[None, :] for i, tok in enumerate(tokens)])


@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda q: q.name)
def test_tiny_model_logits_agree_on_every_path(tmp_path: Path, qtype: QT) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", weight_type=qtype, seed=int(qtype) + 7)
    tokens = [int(v) for v in np.random.default_rng(5).integers(0, 261, size=19)]
    # 11 prompt tokens: groups of 4 plus a tail of 3 in the multi-token kernels
    with Model.load(tm.path, n_ctx=64, n_threads=2) as m:
        batched = on_each_path(lambda: prefill_then_decode(m, tokens, 11))
        stepwise = on_each_path(lambda: _decode_only(m, tokens))
    ref = batched["scalar"]
    spread = float(ref.std())
    for p in AVAILABLE:
        if qtype in FLOAT_TYPES:
            # float sums in another order, grown over the layers: test_forward's
            # bound for float weights against an exact reference
            assert np.abs(batched[p] - ref).max() <= 2e-4 * spread, p
            assert np.abs(stepwise[p] - ref).max() <= 2e-4 * spread, p
        else:
            assert_same_floats(batched[p], ref, f"{qtype.name} {p} batched")
            # the multi-token kernels give each token what one-token calls give
            assert_same_floats(stepwise[p], ref, f"{qtype.name} {p} one token at a time")


def test_mixed_type_model_logits_agree_on_every_path(tmp_path: Path) -> None:
    """Matrices that read one input in several activation formats (test_forward's
    MIXED_ROLES) share jobs and encoding slots: the same floats on every path, batched
    or one token at a time, with 1 thread or 2."""
    roles = {"attn_k": QT.Q4_1, "attn_v": QT.Q8_0, "ffn_gate": QT.Q4_K, "ffn_up": QT.Q8_0}
    tm = make_tiny_model(tmp_path / "m.gguf", weight_type=QT.Q4_0, role_types=roles, seed=13)
    tokens = [int(v) for v in np.random.default_rng(8).integers(0, 261, size=19)]
    with Model.load(tm.path, n_ctx=64, n_threads=2) as m:
        batched = on_each_path(lambda: prefill_then_decode(m, tokens, 11))
        stepwise = on_each_path(lambda: _decode_only(m, tokens))
    with Model.load(tm.path, n_ctx=64, n_threads=1) as m:
        one_thread = prefill_then_decode(m, tokens, 11)
    ref = batched["scalar"]
    assert_same_floats(one_thread, batched[current_isa()], "1 thread against 2")
    for p in AVAILABLE:
        assert_same_floats(batched[p], ref, f"mixed {p} batched")
        assert_same_floats(stepwise[p], ref, f"mixed {p} one token at a time")


REPACKED_TYPES = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.IQ4_NL, QT.Q8_0]


@pytest.mark.parametrize("qtype", REPACKED_TYPES, ids=lambda q: q.name)
def test_repacked_weights_give_the_source_layouts_logits(
    tmp_path: Path, qtype: QT, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose matrices were repacked at load computes exactly what the same
    model read in the file's layout computes, on every path, batched or not."""
    tm = make_tiny_model(tmp_path / "m.gguf", weight_type=qtype, seed=int(qtype) + 3)
    tokens = [int(v) for v in np.random.default_rng(6).integers(0, 261, size=17)]
    monkeypatch.setenv("LOWBIT_REPACK", "0")
    with Model.load(tm.path, n_ctx=64, n_threads=2) as m:
        assert lib.lb_model_repacked_bytes(m._ptr) == 0
        want = prefill_then_decode(m, tokens, 10)
    monkeypatch.delenv("LOWBIT_REPACK")
    for load_path in SIMD:
        assert set_isa(load_path) == 0
        with Model.load(tm.path, n_ctx=64, n_threads=2) as m:
            # every matrix (rows a multiple of 8) and the tied output are repacked
            assert lib.lb_model_repacked_bytes(m._ptr) > 0
            assert lib.lb_model_tensor_repacked(m._ptr, 5, 0) == 1  # blk.0.attn_q
            assert lib.lb_model_tensor_repacked(m._ptr, 2, -1) == 1  # the tied output
            # token_embd: its rows come from the output's copy
            assert lib.lb_model_tensor_repacked(m._ptr, 0, -1) == 1
            batched = on_each_path(lambda m=m: prefill_then_decode(m, tokens, 10))
            stepwise = on_each_path(lambda m=m: _decode_only(m, tokens))
        for p in AVAILABLE:
            assert_same_floats(batched[p], want, f"{qtype.name} loaded on {load_path}, run on {p}")
            assert_same_floats(stepwise[p], want, f"{qtype.name} loaded on {load_path}, run on {p}, stepwise")


def test_scalar_path_does_not_repack(tmp_path: Path) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", weight_type=QT.Q4_0, seed=2)
    assert set_isa("scalar") == 0
    with Model.load(tm.path, n_ctx=16, n_threads=1) as m:
        assert lib.lb_model_repacked_bytes(m._ptr) == 0


def test_smollm2_logits_agree_on_every_path(smollm2_model: Model) -> None:
    rng = np.random.default_rng(9)
    tokens = [int(v) for v in rng.integers(100, 40000, size=70)]
    out = on_each_path(lambda: prefill_then_decode(smollm2_model, tokens, 61))
    for p in AVAILABLE:
        assert_same_floats(out[p], out["scalar"], f"SmolLM2 {p}")
