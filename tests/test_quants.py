"""Tensor types of the kernel library (native/src/quants.c, native/kernels/generic.c).

Decoding is checked bit for bit against gguf-py's reference (gguf.quants), the
Q8_0/F16/BF16 encoders likewise, Lowbit's own activation formats against numpy
versions, and every vec_dot kernel against float64 dot products. The encoders of
the other weight types, and lb_quantize_rows, are tested in test_quantize_types.py.
Run against another build with LOWBIT_NATIVE_PATH.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from lowbit.core.errors import InvalidArgumentError, NativeError
from lowbit.core.native import LB_ERR_UNSUPPORTED, check, ffi, lib
from tests.tiny_models import FP16_FIELDS

# Lowbit's 16-bit activation format for Q8_0 weights (not a GGML type): a float32
# scale and 32 int16 quants per block.
Q16 = 64

FLOAT_TYPES = [T.F32, T.F16, T.BF16]
QUANT_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL]
WEIGHT_TYPES = FLOAT_TYPES + QUANT_TYPES
ACTIVATION_TYPES = [T.Q8_1, T.Q8_K, Q16]
# the encoders tested here (the float types and the activation formats)
ENCODER_TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q8_1, T.Q8_K, Q16]

VEC_DOT_TYPE = {t: T.F32 for t in FLOAT_TYPES}
VEC_DOT_TYPE.update({t: T.Q8_0 for t in (T.Q4_0, T.Q5_0, T.IQ4_NL)})
VEC_DOT_TYPE[T.Q8_0] = Q16
VEC_DOT_TYPE.update({t: T.Q8_1 for t in (T.Q4_1, T.Q5_1)})
VEC_DOT_TYPE.update({t: T.Q8_K for t in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)})

# Q8_1 is 36 bytes (fp16 d and s) in GGML; gguf-py still lists the old 40-byte
# layout. It is an activation format only, never stored in a file.
EXPECTED_SIZES = {t: GGML_QUANT_SIZES[t] for t in [*WEIGHT_TYPES, T.Q8_1, T.Q8_K]}
EXPECTED_SIZES[T.Q8_1] = (32, 36)
EXPECTED_SIZES[Q16] = (32, 68)

FP16_MAX = 0x7BFF
FP16_TINY = 0x0001  # smallest subnormal, 2^-24


def type_name(t: int) -> str:
    return "Q16" if t == Q16 else T(t).name


def _ids(types):
    return [type_name(t) for t in types]


# ---- thin wrappers over the C API ------------------------------------------------


def type_info(t: int) -> tuple[int, int]:
    bs = ffi.new("int64_t *")
    ts = ffi.new("size_t *")
    check(lib.lb_type_info(t, bs, ts))
    return bs[0], ts[0]


def row_size(t: int, n: int) -> int:
    out = ffi.new("size_t *")
    check(lib.lb_row_size(t, n, out))
    return out[0]


def dequantize(t: int, data: np.ndarray, n: int) -> np.ndarray:
    data = np.ascontiguousarray(data).view(np.uint8)
    dst = np.empty(n, dtype=np.float32)
    check(lib.lb_dequantize(t, ffi.from_buffer(data), data.nbytes, ffi.from_buffer("float[]", dst), n))
    return dst


def quantize(t: int, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    dst = np.empty(row_size(t, x.size), dtype=np.uint8)
    check(lib.lb_quantize(t, ffi.from_buffer("float[]", x), x.size, ffi.from_buffer(dst), dst.nbytes))
    return dst


def vec_dot(t: int, w: np.ndarray, rows: int, x: np.ndarray) -> np.ndarray:
    w = np.ascontiguousarray(w).view(np.uint8)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(rows, dtype=np.float32)
    check(
        lib.lb_vec_dot(
            t,
            x.size,
            rows,
            ffi.from_buffer(w),
            w.nbytes,
            ffi.from_buffer("float[]", x),
            ffi.from_buffer("float[]", out),
        )
    )
    return out


# ---- helpers ----------------------------------------------------------------------


def assert_bits_equal(got: np.ndarray, want: np.ndarray, per_block: int, what: str) -> None:
    """Fail with the first differing block unless got and want hold the same bits.

    1-D arrays are compared element by element (floats by bit pattern, so -0.0 != 0.0);
    2-D uint8 arrays row by row, a row being one encoded block.
    """
    got = np.ascontiguousarray(got)
    want = np.ascontiguousarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if got.ndim == 1:
        g = got.view(np.uint8).reshape(got.size, -1)
        w = want.view(np.uint8).reshape(want.size, -1)
        unit = "elements"
    else:
        g, w = got, want
        unit = "blocks"
    bad = np.flatnonzero((g != w).any(axis=1))
    if bad.size:
        i = int(bad[0])
        pytest.fail(
            f"{what}: {bad.size} of {len(g)} {unit} differ; first in block {i // per_block} "
            f"({unit[:-1]} {i}): got {got[i]!r}, expected {want[i]!r}"
        )


def random_fp16_bits(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random finite fp16 bit patterns: normals, subnormals, zeros of both signs."""
    bits = rng.integers(0, 1 << 16, size=size, dtype=np.uint16)
    bits[(bits & 0x7C00) == 0x7C00] ^= 0x4000  # exponent 31 (inf/nan) -> 15
    return bits


def moderate_fp16_bits(rng: np.random.Generator, size: int) -> np.ndarray:
    """Scales of a plausible model: about 1e-2, either sign."""
    v = rng.uniform(0.5, 2.0, size) * 1e-2 * rng.choice([-1.0, 1.0], size)
    return v.astype(np.float16).view(np.uint16)


def set_fp16_fields(blocks: np.ndarray, t: int, fields: list[np.ndarray]) -> None:
    for off, bits in zip(FP16_FIELDS[t], fields, strict=True):
        blocks[:, off : off + 2] = bits.astype("<u2").reshape(-1, 1).view(np.uint8)


def random_quant_blocks(rng: np.random.Generator, t: int, n_blocks: int, case: str) -> np.ndarray:
    """(n_blocks, type_size) uint8: random quant fields, fp16 fields chosen by `case`."""
    _, ts = type_info(t)
    blocks = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    k = len(FP16_FIELDS[t])
    sign = rng.choice(np.array([0, 0x8000], dtype=np.uint16), size=n_blocks)
    if case == "random":
        set_fp16_fields(blocks, t, [random_fp16_bits(rng, n_blocks) for _ in range(k)])
    elif case == "moderate":
        set_fp16_fields(blocks, t, [moderate_fp16_bits(rng, n_blocks) for _ in range(k)])
    elif case == "zero_scale":
        set_fp16_fields(blocks, t, [np.zeros(n_blocks, np.uint16)] * k)
    elif case == "max_scale":
        set_fp16_fields(blocks, t, [FP16_MAX | sign] * k)
    elif case == "subnormal_scale":
        set_fp16_fields(blocks, t, [FP16_TINY | sign] * k)
    elif case == "all_zero":
        blocks[:] = 0
    elif case == "all_ones":  # largest quant codes, with the largest scales
        blocks[:] = 0xFF
        set_fp16_fields(blocks, t, [np.full(n_blocks, FP16_MAX, np.uint16)] * k)
    else:
        raise AssertionError(case)
    return blocks


def gguf_dequantize(t: int, data: np.ndarray) -> np.ndarray:
    return np.asarray(
        gq.dequantize(np.ascontiguousarray(data).view(np.uint8).reshape(-1), t), dtype=np.float32
    )


def decode_activation(vdt: int, data: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode an encoded activation row in numpy: the values d*qs (float64) and,
    for Q8_1, the stored per-block sums s (float64)."""
    data = np.ascontiguousarray(data).view(np.uint8)
    if vdt == T.Q8_0:
        b = data.reshape(-1, 34)
        d = b[:, 0:2].copy().view("<f2").astype(np.float64)
        q = b[:, 2:].copy().view(np.int8).astype(np.float64)
        return (d * q).reshape(n), None
    if vdt == T.Q8_1:
        b = data.reshape(-1, 36)
        d = b[:, 0:2].copy().view("<f2").astype(np.float64)
        s = b[:, 2:4].copy().view("<f2").astype(np.float64).reshape(-1)
        q = b[:, 4:].copy().view(np.int8).astype(np.float64)
        return (d * q).reshape(n), s
    if vdt == T.Q8_K:
        b = data.reshape(-1, 292)
        d = b[:, 0:4].copy().view("<f4").astype(np.float64)
        q = b[:, 4:260].copy().view(np.int8).astype(np.float64)
        return (d * q).reshape(n), None
    if vdt == Q16:
        b = data.reshape(-1, 68)
        d = b[:, 0:4].copy().view("<f4").astype(np.float64)
        q = b[:, 4:].copy().view("<i2").astype(np.float64)
        return (d * q).reshape(n), None
    raise AssertionError(vdt)


def np_roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: to nearest, ties away from zero (a - floor(a) is exact, floor(a + 0.5) is not)."""
    a = np.abs(v)
    f = np.floor(a)
    return np.sign(v) * (f + (a - f >= 0.5))


# ---- the traits table ---------------------------------------------------------------


def test_traits_cover_exactly_the_expected_types():
    bs = ffi.new("int64_t *")
    ts = ffi.new("size_t *")
    known = {t for t in range(-4, 300) if lib.lb_type_info(t, bs, ts) == 0}
    assert known == {int(t) for t in EXPECTED_SIZES}
    supported = {t for t in range(-4, 300) if lib.lb_type_is_supported(t)}
    assert supported == {int(t) for t in WEIGHT_TYPES}


@pytest.mark.parametrize("t", WEIGHT_TYPES + ACTIVATION_TYPES, ids=_ids(WEIGHT_TYPES + ACTIVATION_TYPES))
def test_type_info_and_row_size(t):
    block, size = EXPECTED_SIZES[t]
    assert type_info(t) == (block, size)
    assert row_size(t, block * 7) == size * 7


# ---- dequantization: bit-exact against gguf-py --------------------------------------

QUANT_CASES = ["random", "zero_scale", "max_scale", "subnormal_scale", "all_zero", "all_ones"]


@pytest.mark.parametrize("case", QUANT_CASES)
@pytest.mark.parametrize("t", QUANT_TYPES, ids=_ids(QUANT_TYPES))
def test_dequantize_matches_gguf(t, case):
    rng = np.random.default_rng([int(t), QUANT_CASES.index(case)])
    block, _ = type_info(t)
    n_blocks = 64
    blocks = random_quant_blocks(rng, t, n_blocks, case)
    got = dequantize(t, blocks, n_blocks * block)
    want = gguf_dequantize(t, blocks)
    assert_bits_equal(got, want, block, f"{t.name} {case}")
    if case == "all_zero":
        assert not got.any()


def _float_type_bits(t: int, case: str, rng: np.random.Generator) -> np.ndarray:
    if t == T.F32:
        if case == "random":
            bits = rng.integers(0, 1 << 32, size=4096, dtype=np.uint32)
            bits[(bits & 0x7F800000) == 0x7F800000] ^= 0x40000000  # no inf/nan
            return bits
        if case == "zeros":
            return np.zeros(64, np.uint32)
        return np.array([0x7F7FFFFF, 0xFF7FFFFF, 1, 0x80000001, 0x00800000, 0, 0x80000000], np.uint32)
    # F16 and BF16: every finite bit pattern
    if case == "random":
        bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
        exp_mask = 0x7C00 if t == T.F16 else 0x7F80
        return bits[(bits & exp_mask) != exp_mask]
    if case == "zeros":
        return np.zeros(64, np.uint16)
    if t == T.F16:
        return np.array([0x7BFF, 0xFBFF, 1, 0x8001, 0x0400, 0, 0x8000], np.uint16)
    return np.array([0x7F7F, 0xFF7F, 1, 0x8001, 0x0080, 0, 0x8000], np.uint16)


@pytest.mark.parametrize("case", ["random", "zeros", "extremes"])
@pytest.mark.parametrize("t", FLOAT_TYPES, ids=_ids(FLOAT_TYPES))
def test_dequantize_float_types_match_gguf(t, case):
    bits = _float_type_bits(t, case, np.random.default_rng(int(t)))
    got = dequantize(t, bits, bits.size)
    want = gguf_dequantize(t, bits)
    assert_bits_equal(got, want, 1, f"{t.name} {case}")


# ---- encoders ------------------------------------------------------------------------


def _q8_0_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = 32 * 24
    # 0.49999997 + 0.5 rounds to 1.0 in float: catches roundf done as trunc(v + 0.5)
    ties = np.array(
        [127.0, -0.5, 0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 0.49999997, -0.49999997] + [3.5] * 21,
        np.float32,
    )
    return {
        "normal": rng.standard_normal(n).astype(np.float32),
        "wide": (rng.standard_normal(n) * np.exp(rng.uniform(-20, 12, n))).astype(np.float32),
        "ties": np.tile(ties, 3),  # d = 1 exactly, so x * (1/d) lands on .5 ties
        "zeros": np.zeros(n, np.float32),
        "constant": np.full(n, -0.37, np.float32),
        "near_limit": np.full(64, 8.0e6, np.float32),  # d = 62992, just inside fp16
    }


@pytest.mark.parametrize("kind", ["normal", "wide", "ties", "zeros", "constant", "near_limit"])
def test_quantize_q8_0_matches_gguf(kind):
    x = _q8_0_inputs(np.random.default_rng(8))[kind]
    got = quantize(T.Q8_0, x)
    want = np.asarray(gq.quantize(x, T.Q8_0)).reshape(-1)
    assert_bits_equal(got.reshape(-1, 34), want.reshape(-1, 34).copy(), 1, f"Q8_0 bytes ({kind})")


def test_quantize_q8_0_several_rows_match_gguf():
    x = np.random.default_rng(80).standard_normal((5, 96)).astype(np.float32)
    want = np.asarray(gq.quantize(x, T.Q8_0))
    got = np.stack([quantize(T.Q8_0, row) for row in x])
    assert_bits_equal(got.reshape(-1, 34), want.reshape(-1, 34).copy(), 1, "Q8_0 rows")
    assert_bits_equal(
        quantize(T.Q8_0, x.reshape(-1)).reshape(-1, 34), got.reshape(-1, 34), 1, "Q8_0 one call"
    )


def test_quantize_f16_matches_numpy():
    rng = np.random.default_rng(16)
    x = np.concatenate(
        [
            (rng.standard_normal(4096) * np.exp(rng.uniform(-25, 14, 4096))).astype(np.float32),
            # exact ties between two halves (round to even), overflow and subnormal ties
            np.array(
                [1 + 2.0**-11, 1 + 3 * 2.0**-11, 65504.0, 65519.0, 65520.0, 1e5, -1e30, 1e30], np.float32
            ),
            np.array([2.0**-25, 3 * 2.0**-25, 2.0**-26, -(2.0**-24), 0.0, -0.0, np.inf, -np.inf], np.float32),
        ]
    )
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert_bits_equal(quantize(T.F16, x).view(np.float16), want, 1, "F16")
    assert np.isnan(quantize(T.F16, np.full(4, np.nan, np.float32)).view(np.float16)).all()


def test_quantize_bf16_matches_gguf():
    rng = np.random.default_rng(30)
    bits = rng.integers(0, 1 << 32, size=8192, dtype=np.uint32)
    x = np.concatenate(
        [
            bits.view(np.float32),
            np.array([1e30, -1e30, 3.4e38, np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32),
        ]
    )
    want = np.asarray(gq.quantize(x, T.BF16)).view(np.uint16)
    assert_bits_equal(quantize(T.BF16, x).view(np.uint16), want, 1, "BF16")


def test_quantize_f32_is_identity():
    x = np.array([1e30, -1e30, 1e-45, 0.0, -0.0, 3.25, np.inf], np.float32)
    assert_bits_equal(quantize(T.F32, x).view(np.float32), x, 1, "F32")


def _ref_q8_1(x: np.ndarray) -> np.ndarray:
    """GGML's q8_1 in numpy: as q8_0, plus s = fp16(sum(qs) * d) with the unrounded d."""
    b = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = np_roundf(b * inv).astype(np.int8)
    s = (q.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d).astype(np.float16)
    return np.concatenate([d.astype(np.float16).view(np.uint8), s.view(np.uint8), q.view(np.uint8)], axis=1)


def _ref_q8_k(x: np.ndarray) -> np.ndarray:
    """GGML's q8_K in numpy, with roundf rounding (Lowbit's documented choice)."""
    b = x.reshape(-1, 256).astype(np.float32)
    out = np.zeros((b.shape[0], 292), np.uint8)
    for i, blk in enumerate(b):
        k = int(np.argmax(np.abs(blk)))  # first element of largest magnitude
        if blk[k] == 0:
            continue
        iscale = np.float32(-127) / blk[k]
        q = np.clip(np_roundf(iscale * blk), -127, 127).astype(np.int8)
        out[i, 0:4] = np.array([np.float32(1) / iscale], "<f4").view(np.uint8)
        out[i, 4:260] = q.view(np.uint8)
        out[i, 260:] = q.reshape(16, 16).astype(np.int16).sum(axis=1).astype("<i2").view(np.uint8)
    return out


def _ref_q16(x: np.ndarray) -> np.ndarray:
    """Lowbit's Q16 in numpy: d = max|x| / 32767 in float32 (0 below 1e-30), quants
    roundf(x * (1 / d))."""
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    d = np.where(amax >= np.float32(1e-30), amax / np.float32(32767), np.float32(0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = np_roundf(b * inv).astype("<i2")
    return np.concatenate([d.astype("<f4").view(np.uint8), q.view(np.uint8)], axis=1)


@pytest.mark.parametrize("t", [T.Q8_1, T.Q8_K, Q16], ids=["Q8_1", "Q8_K", "Q16"])
@pytest.mark.parametrize("kind", ["normal", "wide", "zeros", "constant", "rows"])
def test_quantize_activation_formats_match_numpy_reference(t, kind):
    rng = np.random.default_rng([int(t), 3])
    n = 256 * 3
    x = {
        "normal": rng.standard_normal(n),
        # q8_1 refuses blocks that sum beyond fp16 (65504), so stay below that
        "wide": rng.standard_normal(n) * np.exp(rng.uniform(-20, 6, n)),
        "zeros": np.zeros(n),
        "constant": np.full(n, 2.5),
        "rows": np.concatenate(
            [rng.standard_normal(256) * 1e-3, np.zeros(256), rng.standard_normal(256) * 50]
        ),
    }[kind].astype(np.float32)
    ref, per = {T.Q8_1: (_ref_q8_1, 36), T.Q8_K: (_ref_q8_k, 292), Q16: (_ref_q16, 68)}[t]
    got = quantize(t, x).reshape(-1, per)
    assert_bits_equal(got, ref(x), 1, f"{type_name(t)} bytes ({kind})")
    # the decoder agrees with the numpy decoding of the same bytes
    decoded, _ = decode_activation(t, got, n)
    assert_bits_equal(dequantize(t, got, n), decoded.astype(np.float32), 256, f"{type_name(t)} decode")


def test_quantize_q16_tiny_blocks():
    # blocks on either side of the 1e-30 cut, subnormals among them: below it a block
    # encodes as zeros (1/d could overflow), above it as usual
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(32 * 40) * np.repeat(10.0 ** rng.uniform(-44, -25, 40), 32)).astype(np.float32)
    got = quantize(Q16, x).reshape(-1, 68)
    assert_bits_equal(got, _ref_q16(x), 1, "Q16 bytes (tiny)")
    amax = np.abs(x).reshape(-1, 32).max(axis=1)
    assert ((got[:, 4:] == 0).all(axis=1) == (amax < np.float32(1e-30))).all()
    assert (amax < 1e-30).any() and (amax >= 1e-30).any()


def test_quantize_q8_k_huge_magnitude():
    # q8_K keeps d in float32, so 1e30 is representable (q8_0/q8_1 are not: see below)
    x = np.full(256, 1e30, np.float32)
    x[3] = -1e30
    back = dequantize(T.Q8_K, quantize(T.Q8_K, x), 256)
    np.testing.assert_allclose(back, x, rtol=1e-6)


@pytest.mark.parametrize("t", [T.Q8_0, T.Q8_1, T.Q8_K, Q16], ids=["Q8_0", "Q8_1", "Q8_K", "Q16"])
def test_quantize_refuses_what_q8_cannot_hold(t):
    n = type_info(t)[0] * 2
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(n, np.float32)
        x[n - 1] = bad
        with pytest.raises(InvalidArgumentError, match="not finite"):
            quantize(t, x)
    if t in (T.Q8_K, Q16):  # float32 scales: any finite value is held
        x = np.ones(n, np.float32)
        x[40] = 3e38
        back = dequantize(t, quantize(t, x), n)
        assert back[40] == pytest.approx(3e38, rel=1e-6)
    else:
        # the fp16 scale max|x|/127 would be inf (gguf-py writes that inf; Lowbit refuses)
        x = np.ones(n, np.float32)
        x[40] = 1e7
        with pytest.raises(InvalidArgumentError, match=r"block 1 .*fp16 scale"):
            quantize(t, x)
    if t == T.Q8_1:
        # d is fine here (3000/127), but the block sum 96000 is not an fp16
        x = np.ones(n, np.float32)
        x[32:] = 3000.0
        with pytest.raises(InvalidArgumentError, match=r"block 1 sums to more than 65504"):
            quantize(t, x)
        x[32:48] = -3000.0  # the same magnitudes summing to 0 are fine
        quantize(t, x)


@pytest.mark.parametrize("t", ENCODER_TYPES, ids=_ids(ENCODER_TYPES))
def test_round_trip_error(t):
    # RMSE bound per format: half a quant step for Q8 (uniform rounding error is
    # step / sqrt(12); the bound is that of the largest block), half an ulp for floats
    rng = np.random.default_rng([int(t), 7])
    n = 256 * 8
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-3, 3, n))).astype(np.float32)
    back = dequantize(t, quantize(t, x), n).astype(np.float64)
    rmse = float(np.sqrt(np.mean((back - x) ** 2)))
    limit = {
        T.F32: 0.0,
        T.F16: 2.0**-11 * float(np.sqrt(np.mean(x.astype(np.float64) ** 2))),
        T.BF16: 2.0**-8 * float(np.sqrt(np.mean(x.astype(np.float64) ** 2))),
        Q16: float(np.abs(x).max()) / 32767 / np.sqrt(12) * 1.2,
    }.get(t, float(np.abs(x).max()) / 127 / np.sqrt(12) * 1.2)
    assert rmse <= limit, f"{type_name(t)}: rmse {rmse:.3g} > {limit:.3g}"


# ---- vec_dot --------------------------------------------------------------------------

FP16_EPS = 2.0**-11  # relative rounding of a normal fp16
TIGHT_RTOL = 1e-5


def _weights(rng: np.random.Generator, t: int, rows: int, n: int) -> np.ndarray:
    if t == T.F32:
        return rng.standard_normal(rows * n).astype(np.float32).view(np.uint8)
    if t == T.F16:
        return rng.standard_normal(rows * n).astype(np.float16).view(np.uint8)
    if t == T.BF16:
        return np.asarray(gq.quantize(rng.standard_normal(rows * n).astype(np.float32), T.BF16))
    block, _ = type_info(t)
    return random_quant_blocks(rng, t, rows * n // block, "moderate").reshape(-1)


def _split_scale_and_min(t: int, w: np.ndarray, rows: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The two parts d*sc*q and -dmin*m of each weight (float64), by zeroing one fp16 field."""
    if t not in FP16_FIELDS or len(FP16_FIELDS[t]) == 1:
        return gguf_dequantize(t, w).astype(np.float64).reshape(rows, n), np.zeros((rows, n))
    _, ts = type_info(t)
    blocks = w.reshape(-1, ts)
    only_d, only_min = blocks.copy(), blocks.copy()
    d_off, m_off = FP16_FIELDS[t]
    only_d[:, m_off : m_off + 2] = 0
    only_min[:, d_off : d_off + 2] = 0
    return (
        gguf_dequantize(t, only_d).astype(np.float64).reshape(rows, n),
        gguf_dequantize(t, only_min).astype(np.float64).reshape(rows, n),
    )


def _x(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "outliers":  # block maxima spread over 3 orders of magnitude
        x = rng.standard_normal(n) * np.repeat(np.exp(rng.uniform(-3, 4, n // 32)), 32)
        x[rng.integers(0, n, 8)] *= 40
        return x.astype(np.float32)
    if kind == "constant":
        return np.full(n, 0.37, np.float32)
    if kind == "zeros":
        return np.zeros(n, np.float32)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["normal", "outliers", "constant", "zeros"])
@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=_ids(WEIGHT_TYPES))
def test_vec_dot_against_float64(t, kind):
    rng = np.random.default_rng([int(t), len(kind)])
    n, rows = 1024, 3  # 4 super-blocks / 32 blocks per row, odd row count
    vdt = VEC_DOT_TYPE[t]
    w = _weights(rng, t, rows, n)
    x = _x(kind, rng, n)
    got = vec_dot(t, w, rows, x).astype(np.float64)

    wd = gguf_dequantize(t, w).astype(np.float64).reshape(rows, n)
    w_scale, w_min = _split_scale_and_min(t, w, rows, n)
    x64 = x.astype(np.float64)

    # The activation as the kernel sees it, decoded in numpy from the encoded bytes.
    corr = np.zeros(rows)
    corr_mag = np.zeros(rows)
    if vdt == T.F32:
        xa = x64
    else:
        enc = quantize(vdt, x)
        xa, s = decode_activation(vdt, enc, n)
        if s is not None:
            # q8_1 kernels use the stored block sum s = fp16(d * sum(qs)) for the
            # minimum term, not d * sum(qs) from the rounded d: account for it exactly.
            m = w_min.reshape(rows, -1, 32)[:, :, 0]  # per-block minimum
            blk_sum = xa.reshape(-1, 32).sum(axis=1)
            corr = m @ (s - blk_sum)
            corr_mag = np.abs(m) @ np.abs(s)

    # (b) tight: against the decoded activation the integer arithmetic is exact;
    # only float scaling and the order of the block sums differ (~1e-7 per term).
    mag = np.abs(w_scale) @ np.abs(xa) + np.abs(w_min) @ np.abs(xa) + corr_mag
    want_b = wd @ xa + corr
    err_b = np.abs(got - want_b)
    assert (err_b <= TIGHT_RTOL * mag + 1e-30).all(), (
        f"{t.name} tight: rows {np.flatnonzero(err_b > TIGHT_RTOL * mag)}, got {got}, want {want_b}, "
        f"err {err_b}, allowed {TIGHT_RTOL * mag}"
    )

    # (a) against the exact float64 dot product with the unencoded x. Each
    # activation element is off by at most half a quant step, d/2 with
    # d = max|x of its block|/qmax (qmax 127, or 32767 for Q16), plus |q| <= qmax
    # times the rounding of d (q8_0/q8_1: fp16, relative 2^-11, or 2^-25 absolute
    # if d is subnormal; q8_K and Q16 keep d in float32: relative ~1e-7). q8_1 adds
    # the error of its block sum:
    # |s - d16*sum(q)| <= 2^-11 * d * |sum(q)| (s rounded to fp16) + |d - d16| * |sum(q)|.
    want_a = wd @ x64
    if vdt == T.F32:
        tol_a = TIGHT_RTOL * mag
    else:
        qk = 256 if vdt == T.Q8_K else 32
        qmax = 32767 if vdt == Q16 else 127
        d_f = np.abs(x64).reshape(-1, qk).max(axis=1) / qmax
        fp32_d = vdt in (T.Q8_K, Q16)
        d_err = np.full_like(d_f, 1e-6) * d_f if fp32_d else np.maximum(FP16_EPS * d_f, 2.0**-25)
        # 1e-4 of a step covers the float rounding of x * (1/d) before roundf
        # (Q16: 1e-2, its steps being 258 times finer against the same float rounding)
        x_err = np.repeat(d_f * (0.5 + (1e-2 if vdt == Q16 else 1e-4)) + qmax * d_err, qk)
        tol_a = np.abs(wd) @ x_err + TIGHT_RTOL * mag
        if vdt == T.Q8_1:
            m = w_min.reshape(rows, -1, 32)[:, :, 0]
            q_sum = np.abs(
                quantize(vdt, x).reshape(-1, 36)[:, 4:].view(np.int8).astype(np.float64).sum(axis=1)
            )
            tol_a = tol_a + np.abs(m) @ (FP16_EPS * d_f * q_sum + 2.0**-25 + d_err * q_sum)
    err_a = np.abs(got - want_a)
    assert (err_a <= tol_a).all(), f"{t.name} loose: got {got}, want {want_a}, err {err_a}, allowed {tol_a}"

    if kind == "zeros":
        assert not got.any()


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=_ids(WEIGHT_TYPES))
def test_vec_dot_rows_are_independent(t):
    # row r of a multi-row call equals a one-row call on row r alone
    rng = np.random.default_rng([int(t), 11])
    n, rows = 512, 5
    w = _weights(rng, t, rows, n).reshape(rows, -1)
    x = rng.standard_normal(n).astype(np.float32)
    together = vec_dot(t, w, rows, x)
    alone = np.array([vec_dot(t, w[r], 1, x)[0] for r in range(rows)], np.float32)
    assert_bits_equal(together, alone, 1, f"{t.name} rows")


def test_vec_dot_refuses_unencodable_activations():
    rng = np.random.default_rng(1)
    w4, w8 = _weights(rng, T.Q4_0, 1, 64), _weights(rng, T.Q8_0, 1, 64)
    x = np.ones(64, np.float32)
    x[5] = 1e8
    with pytest.raises(InvalidArgumentError, match="fp16 scale"):
        vec_dot(T.Q4_0, w4, 1, x)
    # Q8_0 weights meet Q16 activations, whose float32 scale holds 1e8
    want = gguf_dequantize(T.Q8_0, w8).astype(np.float64) @ x.astype(np.float64)
    assert vec_dot(T.Q8_0, w8, 1, x)[0] == pytest.approx(want, rel=1e-4)
    x[5] = np.nan
    for t, w in ((T.Q4_0, w4), (T.Q8_0, w8)):
        with pytest.raises(InvalidArgumentError, match="not finite"):
            vec_dot(t, w, 1, x)


# ---- bad input ------------------------------------------------------------------------


def _raises(status: int, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        check(status)


@pytest.mark.parametrize("bad_type", [99, -1, 4, 31])
def test_unknown_type_is_refused_everywhere(bad_type):
    bs, ts, sz = ffi.new("int64_t *"), ffi.new("size_t *"), ffi.new("size_t *")
    buf = np.zeros(64, np.float32)
    p = ffi.from_buffer("float[]", buf)
    msg = f"unknown tensor type id {bad_type}"
    assert lib.lb_type_is_supported(bad_type) == 0
    _raises(lib.lb_type_info(bad_type, bs, ts), msg)
    _raises(lib.lb_row_size(bad_type, 32, sz), msg)
    _raises(lib.lb_dequantize(bad_type, p, 128, p, 32), msg)
    _raises(lib.lb_quantize(bad_type, p, 32, p, 128), msg)
    _raises(lib.lb_quantize_rows(bad_type, p, 1, 32, ffi.NULL, p, 128, 1), msg)
    _raises(lib.lb_vec_dot(bad_type, 32, 1, p, 128, p, p), msg)


@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_K, T.IQ4_NL], ids=["Q4_0", "Q4_K", "IQ4_NL"])
def test_bad_element_counts(t):
    block, size = type_info(t)
    src = np.zeros(size * 4, np.uint8)
    dst = np.zeros(block * 4, np.float32)
    x = np.zeros(block * 4, np.float32)
    out = np.zeros(4, np.float32)
    ps, pd = ffi.from_buffer(src), ffi.from_buffer("float[]", dst)
    px, po = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", out)
    sz = ffi.new("size_t *")
    for n in (block + 1, block * 4 - 2):
        _raises(lib.lb_row_size(t, n, sz), f"n = {n} is not a multiple of the {t.name} block size {block}")
        _raises(lib.lb_dequantize(t, ps, src.nbytes, pd, n), "not a multiple")
        _raises(lib.lb_quantize(t, px, n, ps, src.nbytes), "not a multiple")
        _raises(lib.lb_vec_dot(t, n, 1, ps, src.nbytes, px, po), "not a multiple")
    for n in (0, -block):
        _raises(lib.lb_row_size(t, n, sz), "must be positive")
        _raises(lib.lb_dequantize(t, ps, src.nbytes, pd, n), "must be positive")
        _raises(lib.lb_vec_dot(t, n, 1, ps, src.nbytes, px, po), "must be positive")
    _raises(lib.lb_vec_dot(t, block, 0, ps, src.nbytes, px, po), "rows = 0")
    _raises(lib.lb_quantize(T.Q8_0, px, 33, ps, src.nbytes), "not a multiple of the Q8_0 block size 32")


def test_byte_size_mismatch():
    src = np.zeros(18 * 3, np.uint8)  # three Q4_0 blocks
    dst = np.zeros(96, np.float32)
    ps, pd = ffi.from_buffer(src), ffi.from_buffer("float[]", dst)
    for size in (18 * 3 - 1, 18 * 3 + 1, 0, 18 * 2):
        _raises(
            lib.lb_dequantize(T.Q4_0, ps, size, pd, 96),
            f"src_size is {size} bytes, but 96 Q4_0 elements take 54",
        )
    _raises(lib.lb_quantize(T.Q8_0, pd, 64, ps, 67), "dst_size is 67 bytes, but 64 Q8_0 elements take 68")
    out = np.zeros(3, np.float32)
    _raises(
        lib.lb_vec_dot(T.Q4_0, 32, 2, ps, 18 * 3, pd, ffi.from_buffer("float[]", out)),
        "w_size is 54 bytes, but 2 rows of 32 Q4_0 elements take 36",
    )


def test_null_pointers():
    buf = np.zeros(256, np.float32)
    p = ffi.from_buffer("float[]", buf)
    null = ffi.NULL
    bs, ts = ffi.new("int64_t *"), ffi.new("size_t *")
    _raises(lib.lb_type_info(T.Q4_0, null, ts), "block_size is NULL")
    _raises(lib.lb_type_info(T.Q4_0, bs, null), "type_size is NULL")
    _raises(lib.lb_row_size(T.Q4_0, 32, null), "out_bytes is NULL")
    _raises(lib.lb_dequantize(T.Q4_0, null, 18, p, 32), "src is NULL")
    _raises(lib.lb_dequantize(T.Q4_0, p, 18, null, 32), "dst is NULL")
    _raises(lib.lb_quantize(T.Q8_0, null, 32, p, 34), "src is NULL")
    _raises(lib.lb_quantize(T.Q8_0, p, 32, null, 34), "dst is NULL")
    _raises(lib.lb_vec_dot(T.Q4_0, 32, 1, null, 18, p, p), "w is NULL")
    _raises(lib.lb_vec_dot(T.Q4_0, 32, 1, p, 18, null, p), "x is NULL")
    _raises(lib.lb_vec_dot(T.Q4_0, 32, 1, p, 18, p, null), "out is NULL")


def test_size_overflow():
    buf = np.zeros(64, np.float32)
    p = ffi.from_buffer("float[]", buf)
    sz = ffi.new("size_t *")
    _raises(lib.lb_row_size(T.F32, 1 << 62, sz), "overflows size_t")
    _raises(lib.lb_dequantize(T.F32, p, 256, p, 1 << 62), "overflows size_t")
    _raises(
        lib.lb_vec_dot(T.F32, 1 << 40, 1 << 30, p, 256, p, p),
        "rows of n = 1099511627776 F32 elements overflow",
    )
    _raises(lib.lb_vec_dot(T.Q4_K, 1 << 50, 1 << 20, p, 256, p, p), "overflow")


def test_misaligned_buffers():
    raw = np.zeros(18 * 2 + 8, np.uint8)
    dst = np.zeros(65, np.float32)
    odd = ffi.from_buffer(raw[1 : 1 + 36])
    _raises(
        lib.lb_dequantize(T.Q4_0, odd, 36, ffi.from_buffer("float[]", dst), 64),
        "src is not aligned to 2 bytes",
    )
    floats_odd = ffi.cast("float *", ffi.cast("char *", ffi.from_buffer(dst)) + 2)
    _raises(lib.lb_dequantize(T.Q4_0, ffi.from_buffer(raw), 36, floats_odd, 64), "dst is not aligned to 4")


def test_unsupported_requests_are_not_invalid_arguments():
    x = np.zeros(32, np.float32)
    px = ffi.from_buffer("float[]", x)
    dst = np.zeros(64, np.uint8)
    out = np.zeros(1, np.float32)
    # every type has an encoder now; lb_quantize_rows encodes weight types only
    check(lib.lb_quantize(T.Q4_0, px, 32, ffi.from_buffer(dst), 18))
    with pytest.raises(NativeError, match="Q8_1 is an activation format") as info:
        check(lib.lb_quantize_rows(T.Q8_1, px, 1, 32, ffi.NULL, ffi.from_buffer(dst), 36, 1))
    assert info.value.status == LB_ERR_UNSUPPORTED
    with pytest.raises(NativeError, match="Q8_K is an activation format") as info:
        check(lib.lb_vec_dot(T.Q8_K, 256, 1, ffi.from_buffer(dst), 292, px, ffi.from_buffer("float[]", out)))
    assert info.value.status == LB_ERR_UNSUPPORTED
