"""Weight encoders of every type (native/src/quantize.c) through lb_quantize, lb_quantize_rows
and lowbit.core.quants.

Without importance, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 must write gguf-py's bytes;
Lowbit's own encoders (the K-quants, IQ4_NL, and every type with importance) must write the
bytes of their numpy mirror in tests/quant_ref.py. Run against another build with
LOWBIT_NATIVE_PATH.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from lowbit.core import quants
from lowbit.core.errors import InvalidArgumentError, NativeError
from lowbit.core.native import LB_ERR_UNSUPPORTED, check, ffi, lib
from tests import quant_ref

LEGACY = [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
OWN = [T.IQ4_NL, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
QUANT = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, *OWN]
ALL = [T.F32, T.F16, T.BF16, *QUANT]


def _ids(types):
    return [t.name for t in types]


def _bs(t: int) -> int:
    return quants.block_size(t)


# ---- raw C calls ------------------------------------------------------------------------


def c_quantize(t: int, x: np.ndarray) -> np.ndarray:
    """lb_quantize over all of x as one row."""
    x = np.ascontiguousarray(x, np.float32).reshape(-1)
    dst = np.empty(quants.row_bytes(t, x.size), np.uint8)
    check(lib.lb_quantize(t, ffi.from_buffer("float[]", x), x.size, ffi.from_buffer(dst), dst.nbytes))
    return dst


def c_quantize_rows(t, x, imp=None, n_threads=1, nrows=None, n=None, dst_size=None) -> int:
    """lb_quantize_rows with the given (possibly wrong) arguments; returns the status."""
    nrows = x.shape[0] if nrows is None else nrows
    n = x.shape[1] if n is None else n
    dst = np.zeros(max(x.size * 2, 64), np.float32)  # large enough, aligned
    return lib.lb_quantize_rows(
        t,
        ffi.from_buffer("float[]", x),
        nrows,
        n,
        ffi.NULL if imp is None else ffi.from_buffer("float[]", imp),
        ffi.from_buffer(dst),
        quants.row_bytes(t, x.shape[1]) * x.shape[0] if dst_size is None else dst_size,
        n_threads,
    )


# ---- data ---------------------------------------------------------------------------------

HUGE = {T.F16: 1e4, T.BF16: 1e30, T.Q8_0: 1e6, T.Q4_0: 1e5, T.Q5_0: 1e5, T.Q4_1: 1e4, T.Q5_1: 1e4}


def data(kind: str, rng: np.random.Generator, t: int, nrows: int = 6, n: int = 512) -> np.ndarray:
    if kind == "normal":
        x = rng.standard_normal((nrows, n)) * np.exp(rng.uniform(-4, 2, (nrows, 1)))
    elif kind == "heavy":  # Student t with 2 degrees of freedom: rare huge outliers
        x = rng.standard_t(2, (nrows, n))
    elif kind == "zeros":
        x = np.zeros((nrows, n))
        x[1::2] = -0.0  # the sign of a zero scale follows gguf-py too
    elif kind == "constant":
        x = np.full((nrows, n), -0.37)
        x[1] = 2.5
    elif kind == "huge":
        x = rng.standard_normal((nrows, n)) * HUGE.get(t, 1e3)
    elif kind == "odd_rows":
        x = rng.standard_normal((5, 256 * 3)) * 0.02
    elif kind == "mixed":  # zero blocks, constant blocks, lone spikes, tiny and large rows
        x = rng.standard_normal((nrows, n)) * np.exp(rng.uniform(-6, 3, (nrows, 1)))
        x[0, :256] = 0
        x[1, 32:288] = 0.125
        x[2] = 0
        x[2, 7] = -3.0
        x[3] *= 1e-12
    else:
        raise AssertionError(kind)
    return np.ascontiguousarray(x, dtype=np.float32)


def skewed_importance(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mean squared activations of a plausible layer: a few columns dominate."""
    w = rng.standard_normal(n) ** 2 * np.exp(rng.uniform(-3, 3, n))
    w[rng.integers(0, n, max(1, n // 64))] *= 100.0
    return w.astype(np.float32)


def block_errors(t: int, x: np.ndarray, enc: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-block weighted squared error of an encoding (float64)."""
    bs = _bs(t)
    y = quants.dequantize_rows(t, enc, x.shape[1]).astype(np.float64)
    wb = np.broadcast_to(w.astype(np.float64), x.shape)
    return ((x.astype(np.float64) - y) ** 2 * wb).reshape(-1, bs).sum(axis=1)


def gguf_bytes(t: int, x: np.ndarray) -> np.ndarray:
    if t == T.F16:
        return x.astype(np.float16).view(np.uint8).reshape(x.shape[0], -1)
    return np.asarray(gq.quantize(x, t)).view(np.uint8).reshape(x.shape[0], -1)


def assert_same_blocks(t: int, got: np.ndarray, want: np.ndarray, what: str) -> None:
    bs_bytes = quants.row_bytes(t, _bs(t))
    g, w = got.reshape(-1, bs_bytes), want.reshape(-1, bs_bytes)
    bad = np.flatnonzero((g != w).any(axis=1))
    if bad.size:
        i = int(bad[0])
        pytest.fail(f"{what}: {bad.size} of {len(g)} blocks differ; first {i}: got {g[i]}, want {w[i]}")


# ---- bytes of the legacy encoders: gguf-py's --------------------------------------------


@pytest.mark.parametrize("kind", ["normal", "heavy", "zeros", "constant", "huge", "odd_rows"])
@pytest.mark.parametrize("t", LEGACY, ids=_ids(LEGACY))
def test_legacy_bytes_match_gguf(t, kind):
    x = data(kind, np.random.default_rng([int(t), len(kind)]), t)
    want = gguf_bytes(t, x)
    assert_same_blocks(t, c_quantize(t, x).reshape(want.shape), want, f"{t.name} lb_quantize {kind}")
    for n_threads in (1, 2):
        got = quants.quantize_rows(t, x, n_threads=n_threads)
        assert_same_blocks(t, got, want, f"{t.name} lb_quantize_rows {kind} threads={n_threads}")


def test_legacy_rounding_ties_match_gguf():
    # d = 1 exactly for q4_0 (max -8): x * (1/d) + 8.5 lands on exact .5 fractions, which
    # gguf-py truncates after adding 8.5 (round half up), unlike roundf or rint
    x = np.tile(np.array([-8.0, -7.5, -6.5, -0.5, 0.5, 1.5, 2.5, 6.5, 7.0, 7.4999995], np.float32), 16)[
        None, :
    ]
    x = np.ascontiguousarray(x[:, :128])
    for t in (T.Q4_0, T.Q5_0, T.Q4_1, T.Q5_1):
        assert_same_blocks(t, quants.quantize_rows(t, x), gguf_bytes(t, x), f"{t.name} ties")


# ---- Lowbit's own encoders: bytes of the numpy mirror ------------------------------------


def assert_matches_reference(
    t: int, x: np.ndarray, imp: np.ndarray | None, got: np.ndarray, what: str
) -> None:
    """The C bytes must equal quant_ref's. Float evaluation order could in principle split rare
    near-ties differently, so the test allows 1% of blocks to differ provided the C result is
    not worse overall; every difference is listed in the failure message otherwise."""
    want = quant_ref.quantize(t, x, imp)
    bs_bytes = quants.row_bytes(t, _bs(t))
    g, w = got.reshape(-1, bs_bytes), want.reshape(-1, bs_bytes)
    bad = np.flatnonzero((g != w).any(axis=1))
    if bad.size == 0:
        return
    weights = np.ones(x.shape[1], np.float32) if imp is None else imp
    e_got = block_errors(t, x, got, weights)
    e_want = block_errors(t, x, want, weights)
    detail = ", ".join(f"block {i}: C error {e_got[i]:.6g} vs numpy {e_want[i]:.6g}" for i in bad[:10])
    assert bad.size <= 0.01 * len(g) and e_got.sum() <= e_want.sum() * (1 + 1e-9), (
        f"{what}: {bad.size} of {len(g)} blocks differ from the numpy reference ({detail})"
    )


# Lowbit's own encoders: the K-quants and IQ4_NL with and without importance, the legacy
# types with importance (without, they are gguf-py's: see above).
OWN_CASES = [(t, False) for t in OWN] + [(t, True) for t in QUANT]


@pytest.mark.parametrize("kind", ["normal", "heavy", "mixed"])
@pytest.mark.parametrize(
    ("t", "with_imp"), OWN_CASES, ids=[f"{t.name}-{'importance' if i else 'plain'}" for t, i in OWN_CASES]
)
def test_own_encoders_match_numpy_reference(t, with_imp, kind):
    rng = np.random.default_rng([int(t), int(with_imp), len(kind)])
    x = data(kind, rng, t, nrows=7, n=512)
    imp = skewed_importance(rng, x.shape[1]) if with_imp else None
    if imp is not None and kind == "mixed":
        imp[:64] = 0  # blocks without weight keep the plain encoding
    got = quants.quantize_rows(t, x, importance=imp, n_threads=2)
    assert_matches_reference(t, x, imp, got, f"{t.name} {kind} importance={with_imp}")


# ---- round trip ----------------------------------------------------------------------------

# A uniform quantizer with step s has rms error s / sqrt(12). The naive encoder of each format
# takes s from its block (or sub-block) alone: max|x| over the negative code range for the
# symmetric types, (max - min) / (levels - 1) for those with a minimum. Bits per weight set
# the number of levels. The legacy reference encoders are that naive encoder (up to fp16
# scales and the one-sided code range of q4_0/q5_0); Lowbit's searches must beat it. Measured
# on N(0, 1): 0.98-1.0 of the bound for the legacy types, 0.76 (Q2_K) to 0.94 (Q3_K) for the
# searched ones.
NAIVE = {  # type: (block or sub-block length, range kind, levels of that range)
    T.Q8_0: (32, "abs", 127),
    T.Q4_0: (32, "abs", 8),
    T.Q5_0: (32, "abs", 16),
    T.Q4_1: (32, "range", 15),
    T.Q5_1: (32, "range", 31),
    T.IQ4_NL: (32, "abs", 8),  # 16 levels, as q4_0
    T.Q2_K: (16, "range", 3),
    T.Q3_K: (16, "abs", 4),
    T.Q4_K: (32, "range", 15),
    T.Q5_K: (32, "range", 31),
    T.Q6_K: (16, "abs", 32),
}
RMSE_FACTOR = {T.Q8_0: 1.02, T.Q4_0: 1.03, T.Q5_0: 1.02, T.Q4_1: 1.0, T.Q5_1: 1.0, T.IQ4_NL: 0.9}


def naive_rmse(t: int, x: np.ndarray) -> float:
    length, kind, levels = NAIVE[t]
    b = x.reshape(-1, length).astype(np.float64)
    r = np.abs(b).max(axis=1) if kind == "abs" else b.max(axis=1) - b.min(axis=1)
    return float(np.sqrt(np.mean((r / levels) ** 2 / 12)))


@pytest.mark.parametrize("t", ALL, ids=_ids(ALL))
def test_round_trip_error(t):
    rng = np.random.default_rng([int(t), 99])
    x = rng.standard_normal((16, 1024)).astype(np.float32)
    enc = quants.quantize_rows(t, x)
    back = quants.dequantize_rows(t, enc, 1024)
    # the C decoder agrees with gguf-py on these bytes
    np.testing.assert_array_equal(back.reshape(-1), np.asarray(gq.dequantize(enc.reshape(-1), t)).reshape(-1))
    rmse = float(np.sqrt(np.mean((back.astype(np.float64) - x) ** 2)))
    if t in NAIVE:
        limit = naive_rmse(t, x) * RMSE_FACTOR.get(t, 0.96)
    else:  # half an ulp of the float format at most, rms over N(0, 1)
        limit = {T.F32: 0.0, T.F16: 2.0**-11, T.BF16: 2.0**-8}[t]
    assert rmse <= limit, f"{t.name}: rmse {rmse:.4g} > {limit:.4g}"


def test_lb_quantize_equals_rows():
    # one long lb_quantize call, row by row calls and lb_quantize_rows give the same bytes
    rng = np.random.default_rng(4)
    x = data("mixed", rng, T.Q4_K, nrows=4, n=512)
    for t in QUANT:
        rows = quants.quantize_rows(t, x, n_threads=2)
        np.testing.assert_array_equal(c_quantize(t, x).reshape(rows.shape), rows)
        np.testing.assert_array_equal(np.stack([c_quantize(t, r) for r in x]), rows)


# ---- importance ----------------------------------------------------------------------------


@pytest.mark.parametrize("t", QUANT, ids=_ids(QUANT))
def test_importance_lowers_weighted_error(t):
    rng = np.random.default_rng([int(t), 5])
    x = (rng.standard_normal((12, 1024)) * np.exp(rng.uniform(-2, 1, (12, 1)))).astype(np.float32)
    imp = skewed_importance(rng, 1024)
    plain = quants.quantize_rows(t, x)
    weighted = quants.quantize_rows(t, x, importance=imp, n_threads=2)
    e0 = block_errors(t, x, plain, imp)
    e1 = block_errors(t, x, weighted, imp)
    worse = np.flatnonzero(e1 > e0 * (1 + 1e-12))
    assert worse.size == 0, (
        f"{t.name}: blocks {worse[:10]} are worse with importance: {e1[worse[:10]]} > {e0[worse[:10]]}"
    )
    assert e1.sum() < 0.9 * e0.sum(), (
        f"{t.name}: weighted error {e1.sum():.4g} vs {e0.sum():.4g} without importance"
    )


@pytest.mark.parametrize("t", [T.F32, T.F16, T.BF16], ids=["F32", "F16", "BF16"])
def test_importance_is_ignored_by_float_types(t):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    imp = skewed_importance(rng, 64)
    np.testing.assert_array_equal(quants.quantize_rows(t, x, importance=imp), quants.quantize_rows(t, x))


@pytest.mark.parametrize("t", QUANT, ids=_ids(QUANT))
def test_importance_edge_cases(t):
    rng = np.random.default_rng([int(t), 8])
    x = data("mixed", rng, t, nrows=5, n=512)
    plain = quants.quantize_rows(t, x)
    # all-zero importance: every block keeps the plain encoding
    np.testing.assert_array_equal(quants.quantize_rows(t, x, importance=np.zeros(512, np.float32)), plain)
    # a single weighted column, uniform weights, huge weights: finite, never worse
    one_hot = np.zeros(512, np.float32)
    one_hot[300] = 1.0
    for imp in (one_hot, np.ones(512, np.float32), np.full(512, 3e38, np.float32)):
        enc = quants.quantize_rows(t, x, importance=imp)
        e0 = block_errors(t, x, plain, imp.astype(np.float64))
        e1 = block_errors(t, x, enc, imp.astype(np.float64))
        assert np.isfinite(quants.dequantize_rows(t, enc, 512)).all()
        assert (e1 <= e0 * (1 + 1e-12)).all(), (
            f"{t.name}: worse with importance on blocks {np.flatnonzero(e1 > e0)}"
        )
    # all-zero and constant rows stay exact where the format can hold them
    z = np.zeros((2, 512), np.float32)
    z[1] = 0.5
    back = quants.dequantize_rows(t, quants.quantize_rows(t, z, importance=skewed_importance(rng, 512)), 512)
    assert not back[0].any()
    np.testing.assert_allclose(back[1], 0.5, rtol=2e-3)


@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_K, T.Q6_K, T.IQ4_NL], ids=["Q4_0", "Q4_K", "Q6_K", "IQ4_NL"])
def test_threads_do_not_change_bytes(t):
    rng = np.random.default_rng([int(t), 9])
    x = data("normal", rng, t, nrows=301, n=256 * 5)  # odd row count, several tasks
    imp = skewed_importance(rng, x.shape[1])
    for w in (None, imp):
        one = quants.quantize_rows(t, x, importance=w, n_threads=1)
        for n_threads in (2, 3, 16, 1024):
            np.testing.assert_array_equal(quants.quantize_rows(t, x, importance=w, n_threads=n_threads), one)


# ---- bad input -------------------------------------------------------------------------------


def _raises(status: int, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        check(status)


@pytest.mark.parametrize("t", [*QUANT, T.F16, T.BF16], ids=_ids([*QUANT, T.F16, T.BF16]))
def test_non_finite_values_are_refused(t):
    n = _bs(t) * 4
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((3, n), np.float32)
        x[2, n - 3] = bad
        _raises(
            c_quantize_rows(t, x), rf"src\[{2 * n + n - 3}\] = .* \(row 2, column {n - 3}\) is not finite"
        )
        if t not in (T.F16, T.BF16):  # lb_quantize keeps IEEE behaviour for the float types
            with pytest.raises(InvalidArgumentError, match="not finite"):
                c_quantize(t, x)
        with pytest.raises(InvalidArgumentError, match="not finite"):
            quants.quantize_rows(t, x, importance=np.ones(n, np.float32), n_threads=2)


@pytest.mark.parametrize("t", QUANT, ids=_ids(QUANT))
def test_scale_overflow_is_refused(t):
    # beyond each format's range an fp16 scale would be infinite; gguf-py writes that inf
    n = _bs(t) * 2
    x = np.ones((2, n), np.float32)
    x[1, n - 1] = 3e9
    with pytest.raises(
        InvalidArgumentError, match=rf"row 1, block 1 has max \|x\| = 3e\+09, beyond the {t.name}"
    ):
        quants.quantize_rows(t, x)
    with pytest.raises(InvalidArgumentError, match="fp16 scale"):
        quants.quantize_rows(t, x, importance=np.ones(n, np.float32))
    with pytest.raises(InvalidArgumentError, match=r"block 3 .*fp16 scale"):
        c_quantize(t, x)
    # the extremes of float32 are refused the same way, not mishandled
    x[1, 0] = -3.4e38
    for imp in (None, np.ones(n, np.float32)):
        with pytest.raises(InvalidArgumentError, match="fp16 scale"):
            quants.quantize_rows(t, x, importance=imp)


def test_float_overflow_is_refused_by_rows():
    x = np.ones((2, 8), np.float32)
    x[1, 3] = 1e5
    with pytest.raises(
        InvalidArgumentError, match=r"src\[11\] = 100000 \(row 1, column 3\) is beyond the F16 range"
    ):
        quants.quantize_rows(T.F16, x)
    assert np.isinf(c_quantize(T.F16, x).view(np.float16)[11])  # lb_quantize: IEEE overflow, as before
    quants.quantize_rows(T.BF16, x)  # 1e5 is fine in bf16


def test_bad_shapes_and_sizes():
    x = np.zeros((4, 256), np.float32)
    _raises(c_quantize_rows(T.Q4_K, x, n=255), "n = 255 is not a multiple of the Q4_K block size 256")
    _raises(c_quantize_rows(T.Q4_0, x, n=48), "n = 48 is not a multiple of the Q4_0 block size 32")
    _raises(c_quantize_rows(T.Q4_0, x, n=0), "n = 0 elements, must be positive")
    _raises(c_quantize_rows(T.Q4_0, x, nrows=0), "nrows = 0, must be positive")
    _raises(c_quantize_rows(T.Q4_0, x, nrows=-3), "nrows = -3, must be positive")
    _raises(
        c_quantize_rows(T.Q4_0, x, dst_size=18 * 8 * 4 - 1),
        "dst_size is 575 bytes, but 4 rows of 256 Q4_0 elements take 576 bytes",
    )
    _raises(c_quantize_rows(T.Q4_0, x, dst_size=18 * 8 * 5), "dst_size is 720 bytes")
    _raises(c_quantize_rows(T.Q4_0, x, nrows=1 << 60), "rows of n_per_row = 256 Q4_0 elements overflow")
    _raises(c_quantize_rows(T.F32, x, nrows=1 << 40, n=1 << 30), "overflow size_t")
    _raises(c_quantize_rows(T.Q4_0, x, n_threads=0), r"n_threads = 0, must be in 1\.\.1024")
    _raises(c_quantize_rows(T.Q4_0, x, n_threads=-2), "n_threads = -2")
    _raises(c_quantize_rows(T.Q4_0, x, n_threads=1025), "n_threads = 1025")
    _raises(c_quantize_rows(99, x, dst_size=64), "unknown tensor type id 99")


def test_bad_importance():
    x = np.zeros((2, 64), np.float32)
    for value, what in ((-1.0, "-1"), (-1e-30, "-1e-30"), (np.nan, "nan"), (np.inf, "inf")):
        imp = np.ones(64, np.float32)
        imp[40] = value
        _raises(
            c_quantize_rows(T.Q4_0, x, imp=imp),
            rf"importance\[40\] = {what}, must be finite and >= 0",
        )
    imp = np.ones(64, np.float32)
    imp[3] = -0.0  # negative zero is zero
    check(c_quantize_rows(T.Q4_0, x, imp=imp))


def test_null_and_misaligned_pointers():
    x = np.zeros((1, 64), np.float32)
    dst = np.zeros(128, np.float32)
    px, pd = ffi.from_buffer("float[]", x), ffi.from_buffer(dst)
    _raises(lib.lb_quantize_rows(T.Q4_0, ffi.NULL, 1, 64, ffi.NULL, pd, 36, 1), "src is NULL")
    _raises(lib.lb_quantize_rows(T.Q4_0, px, 1, 64, ffi.NULL, ffi.NULL, 36, 1), "dst is NULL")
    odd = ffi.cast("float *", ffi.cast("char *", pd) + 1)
    _raises(lib.lb_quantize_rows(T.Q4_0, px, 1, 64, ffi.NULL, odd, 36, 1), "dst is not aligned to 2 bytes")
    _raises(lib.lb_quantize_rows(T.Q4_0, odd, 1, 64, ffi.NULL, pd, 36, 1), "src is not aligned to 4 bytes")
    _raises(lib.lb_quantize_rows(T.Q4_0, px, 1, 64, odd, pd, 36, 1), "importance is not aligned to 4 bytes")


def test_activation_formats_are_unsupported_by_rows():
    x = np.zeros((1, 256), np.float32)
    for t in (T.Q8_1, T.Q8_K):
        with pytest.raises(NativeError, match=f"{t.name} is an activation format") as info:
            check(c_quantize_rows(t, x))
        assert info.value.status == LB_ERR_UNSUPPORTED


def test_python_wrappers_refuse_bad_arrays():
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(InvalidArgumentError, match="2-D float32"):
        quants.quantize_rows(T.Q4_0, x.astype(np.float64))
    with pytest.raises(InvalidArgumentError, match="2-D float32"):
        quants.quantize_rows(T.Q4_0, x.reshape(-1))
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        quants.quantize_rows(T.Q4_0, np.zeros((64, 2), np.float32).T)
    with pytest.raises(InvalidArgumentError, match=r"importance has shape \(32,\), expected \(64,\)"):
        quants.quantize_rows(T.Q4_0, x, importance=np.ones(32, np.float32))
    with pytest.raises(InvalidArgumentError, match="not a multiple of the Q4_K block size"):
        quants.quantize_rows(T.Q4_K, x)
    assert quants.quantize_rows(T.Q4_0, np.zeros((0, 64), np.float32)).shape == (0, 36)
    enc = quants.quantize_rows(T.Q4_0, x)
    with pytest.raises(InvalidArgumentError, match="uint8"):
        quants.dequantize_rows(T.Q4_0, enc.view(np.int8), 64)
    with pytest.raises(InvalidArgumentError, match="not a whole number of 36-byte rows"):
        quants.dequantize_rows(T.Q4_0, enc.reshape(-1)[:-1], 64)
    assert quants.dequantize_rows(T.Q4_0, enc.reshape(-1), 64).shape == (2, 64)
    assert quants.block_size(T.Q6_K) == 256 and quants.row_bytes(T.Q6_K, 512) == 420
