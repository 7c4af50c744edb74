"""Numpy mirror of Lowbit's own weight encoders (native/src/quantize.c).

An independent reference for the tests: the searches for Q2_K..Q6_K and IQ4_NL
(with and without importance) and the importance searches of Q8_0, Q4_0, Q5_0,
Q4_1 and Q5_1, written from the algorithm's description, vectorized over blocks.
Every float operation is the C code's, in float32 or float64 as there and in the
same order (sums in LANES interleaved float32 partial sums; nearest-even rounding
is np.rint), so the bytes are expected to be identical. The no-importance
encodings of the legacy types are gguf-py's (gguf.quants.quantize).

Entry point: quantize(qtype, x, importance=None) -> (nrows, row_bytes) uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

F32 = np.float32
F64 = np.float64
TINY = F32(1e-30)
REFINE = 2
LANES = 4
QK_K = 256

KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], F32)
NL_MID = ((KVALUES[:-1] + KVALUES[1:]) / 2).astype(F32)


@dataclass(frozen=True)
class Search:
    ncand: int
    step: float


# ---- primitives ----------------------------------------------------------------


def code(v: np.ndarray, lo, hi) -> np.ndarray:
    """Clamp to [lo, hi] (NaN -> lo) and round to nearest even, in float32."""
    lo = np.asarray(lo, F32)
    hi = np.asarray(hi, F32)
    v = np.where(v > lo, v, lo).astype(F32)
    v = np.where(v < hi, v, hi).astype(F32)
    return np.rint(v)


def lanes_sum(t: np.ndarray) -> np.ndarray:
    """(B, n) float32 -> (B,) float64: element j into lane j % LANES, lanes combined pairwise."""
    b, n = t.shape
    t = t.astype(F32).reshape(b, n // LANES, LANES)
    acc = np.zeros((b, LANES), F32)
    for k in range(n // LANES):
        acc = acc + t[:, k, :]
    return ((acc[:, 0] + acc[:, 1]) + (acc[:, 2] + acc[:, 3])).astype(F64)


def seq_sum(t: np.ndarray) -> np.ndarray:
    """(B, n) float64 summed in element order, starting from 0 (as a C loop does)."""
    t = np.concatenate([np.zeros((t.shape[0], 1)), t], axis=1)
    return np.cumsum(t, axis=1)[:, -1]


def f16_bits(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, F32).astype(np.float16).view(np.uint16)


def f16_value(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, np.uint16).view(np.float16).astype(F32)


def signed_absmax(x: np.ndarray) -> np.ndarray:
    """The first element of largest magnitude, with its sign."""
    return np.take_along_axis(x, np.argmax(np.abs(x), axis=1)[:, None], axis=1)[:, 0].astype(F32)


def recip(d: np.ndarray, positive: bool = False) -> np.ndarray:
    """1/d in float32, 0 where d is 0 (or not > 0)."""
    ok = d > 0 if positive else d != 0
    return np.where(ok, F32(1) / np.where(ok, d, F32(1)), F32(0)).astype(F32)


def _keep_best(a, b, best, best_s, active=None):
    valid = b > 0
    score = np.where(valid, a * a / np.where(valid, b, 1.0), 0.0)
    better = valid & (score > best)
    if active is not None:
        better &= active
    return better, np.where(better, score, best), np.where(better, a / np.where(valid, b, 1.0), best_s)


# ---- searches ----------------------------------------------------------------------


def sym_sums(x, w, iscale, lo, hi):
    q = code(x * iscale[:, None], lo, hi)
    wq = w * q
    return lanes_sum(wq * x), lanes_sum(wq * q)


def sym_fit(x: np.ndarray, w: np.ndarray, nlo: int, nhi: int, sp: Search) -> np.ndarray:
    """Best scale s (float64) for x ~ s * q, q in -nlo..nhi; 0 where nothing fits."""
    v = signed_absmax(x)
    tiny = np.abs(v) < TINY
    lo, hi = F32(-nlo), F32(nhi)
    best = np.zeros(len(x))
    best_s = np.zeros(len(x))
    for side in range(1 if nlo == nhi else 2):
        mag = F32(nlo if side == 0 else nhi)
        sgn = F32(-1 if side == 0 else 1)
        for i in range(sp.ncand):
            t = sgn * (mag + F32(0.5) - F32(sp.step) * F32(i))
            a, b = sym_sums(x, w, (t / v).astype(F32), lo, hi)
            _, best, best_s = _keep_best(a, b, best, best_s)
    active = best_s != 0
    for _ in range(REFINE):
        iscale = (1.0 / np.where(active, best_s, 1.0)).astype(F32)
        a, b = sym_sums(x, w, iscale, lo, hi)
        active, best, best_s = _keep_best(a, b, best, best_s, active)
    return np.where(tiny, 0.0, best_s)


def affine_fit(x, w, qmax: int, sp: Search, m_nonpos: bool) -> tuple[np.ndarray, np.ndarray]:
    """Best (d, m) (float64) for x ~ d * q + m, q in 0..qmax, d > 0; m <= 0 if m_nonpos."""
    mn = x.min(axis=1)
    mx = x.max(axis=1)
    if m_nonpos:
        mn = np.where(mn > 0, F32(0), mn).astype(F32)
    rng = (mx - mn).astype(F32)
    small = ~(rng >= TINY)
    wx = w * x
    sw, swx, swxx = lanes_sum(w), lanes_sum(wx), lanes_sum(wx * x)
    best = np.full(len(x), np.inf)
    d = (rng / F32(qmax)).astype(F64)
    m = mn.astype(F64)

    def attempt(off, iscale, active):
        nonlocal best, d, m
        q = code((x - off[:, None]) * iscale[:, None], F32(0), F32(qmax))
        wq = w * q
        swq, swqq, swxq = lanes_sum(wq), lanes_sum(wq * q), lanes_sum(wq * x)
        det = sw * swqq - swq * swq
        ok = det > 0
        det1 = np.where(ok, det, 1.0)
        dd = (sw * swxq - swq * swx) / det1
        mm = (swqq * swx - swq * swxq) / det1
        if m_nonpos:
            pos = mm > 0
            mm = np.where(pos, 0.0, mm)
            dd = np.where(pos, swxq / np.where(swqq > 0, swqq, 1.0), dd)
        ok &= dd > 0
        err = swxx - 2 * dd * swxq - 2 * mm * swx + dd * dd * swqq + 2 * dd * mm * swq + mm * mm * sw
        better = ok & (err < best) & active
        best = np.where(better, err, best)
        d = np.where(better, dd, d)
        m = np.where(better, mm, m)

    everyone = np.ones(len(x), bool)
    for i in range(sp.ncand):
        iscale = ((F32(qmax) + F32(0.5) - F32(sp.step) * F32(i)) / rng).astype(F32)
        attempt(mn, iscale, everyone)
    active = best < np.inf
    for _ in range(REFINE):
        prev = best
        attempt(m.astype(F32), (1.0 / np.where(active, d, 1.0)).astype(F32), active)
        active = active & (best < prev)
    return np.where(small, 0.0, d), np.where(small, mn.astype(F64), m)


def nl_fit(x: np.ndarray, w: np.ndarray, sp: Search) -> np.ndarray:
    """Best scale (float64) for x ~ s * KVALUES[idx]."""
    v = signed_absmax(x)
    tiny = np.abs(v) < TINY

    def sums(iscale):
        k = KVALUES[np.searchsorted(NL_MID, x * iscale[:, None], side="left")]
        wk = w * k
        return lanes_sum(wk * x), lanes_sum(wk * k)

    best = np.zeros(len(x))
    best_s = np.zeros(len(x))
    for side in range(2):
        mag = F32(127 if side == 0 else 113)
        sgn = F32(-1 if side == 0 else 1)
        for i in range(sp.ncand):
            t = sgn * (mag - F32(sp.step) * F32(i))
            a, b = sums((t / v).astype(F32))
            _, best, best_s = _keep_best(a, b, best, best_s)
    active = best_s != 0
    for _ in range(REFINE):
        a, b = sums((1.0 / np.where(active, best_s, 1.0)).astype(F32))
        active, best, best_s = _keep_best(a, b, best, best_s, active)
    return np.where(tiny, 0.0, best_s)


# ---- packing -------------------------------------------------------------------------


def _u8(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate([np.ascontiguousarray(p).view(np.uint8) for p in parts], axis=1)


def _nibbles(q: np.ndarray) -> np.ndarray:
    q = q.astype(np.uint8)
    return (q[:, :16] & 15) | ((q[:, 16:] & 15) << 4)


def _q5_high(q: np.ndarray) -> np.ndarray:
    bits = (q.astype(np.uint32) >> 4) & 1
    h = (bits << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return h.astype("<u4").view(np.uint8).reshape(-1, 4)


def _d(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, "<u2").reshape(-1, 1)


def pack_q2_k(q, sc, mn, d, dmin):
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)
    scales = (sc | (mn << 4)).astype(np.uint8)
    return _u8(scales, qs, _d(d), _d(dmin))


def pack_q3_k(q, sc, d):
    u = (q + 4).astype(np.uint8)
    lo = (u & 3).reshape(-1, 2, 4, 32)
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 2) | (lo[:, :, 2] << 4) | (lo[:, :, 3] << 6)).reshape(-1, 64)
    hb = (u >> 2).reshape(-1, 8, 32).astype(np.uint8)
    hmask = (hb << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    f = (sc + 32).astype(np.uint8)
    scales = np.zeros((len(u), 12), np.uint8)
    for j in range(16):
        scales[:, j % 8] |= (f[:, j] & 15) << (0 if j < 8 else 4)
        scales[:, 8 + j % 4] |= (f[:, j] >> 4) << (2 * (j // 4))
    return _u8(hmask, qs, scales, _d(d))


def pack_scales_k4(sc, mn):
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    b = np.zeros((len(sc), 12), np.uint8)
    for j in range(4):
        b[:, j] = sc[:, j] | ((sc[:, j + 4] >> 4) << 6)
        b[:, j + 4] = mn[:, j] | ((mn[:, j + 4] >> 4) << 6)
        b[:, j + 8] = (sc[:, j + 4] & 15) | ((mn[:, j + 4] & 15) << 4)
    return b


def _q4_k_qs(q):
    q = q.astype(np.uint8).reshape(-1, 4, 2, 32)
    return ((q[:, :, 0] & 15) | ((q[:, :, 1] & 15) << 4)).reshape(-1, 128)


def pack_q4_k(q, sc, mn, d, dmin):
    return _u8(_d(d), _d(dmin), pack_scales_k4(sc, mn), _q4_k_qs(q))


def pack_q5_k(q, sc, mn, d, dmin):
    hb = ((q.astype(np.uint8) >> 4) & 1).reshape(-1, 8, 32)
    qh = (hb << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    return _u8(_d(d), _d(dmin), pack_scales_k4(sc, mn), qh, _q4_k_qs(q))


def pack_q6_k(q, sc, d):
    u = (q + 32).astype(np.uint8).reshape(-1, 2, 128)
    ql = ((u[:, :, :64] & 15) | ((u[:, :, 64:] & 15) << 4)).reshape(-1, 128)
    h = (u >> 4).reshape(-1, 2, 4, 32)
    qh = (h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)).reshape(-1, 64)
    return _u8(ql, qh, sc.astype(np.int8), _d(d))


# ---- K-quants -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KMin:
    nsub: int
    sublen: int
    qmax: int
    fmax: int
    sp: tuple[Search, Search]  # without, with importance


@dataclass(frozen=True)
class KSym:
    nlo: int
    nhi: int
    flo: int
    fhi: int
    sp: tuple[Search, Search]


Q2_K = KMin(16, 16, 3, 15, (Search(4, 0.25), Search(8, 0.125)))
Q4_K = KMin(8, 32, 15, 63, (Search(4, 0.5), Search(8, 0.25)))
Q5_K = KMin(8, 32, 31, 63, (Search(4, 1.0), Search(8, 0.5)))
Q3_K = KSym(4, 3, 32, 31, (Search(4, 0.25), Search(8, 0.125)))
Q6_K = KSym(32, 31, 128, 127, (Search(4, 1.0), Search(8, 1.0)))
IQ4_NL = (Search(4, 4.0), Search(8, 2.0))

LEGACY = {  # type: (kind, code range or qmax, search)
    T.Q8_0: ("sym", (127, 127), Search(4, 0.5)),
    T.Q4_0: ("sym", (8, 7), Search(8, 0.25)),
    T.Q5_0: ("sym", (16, 15), Search(8, 0.5)),
    T.Q4_1: ("affine", 15, Search(8, 0.25)),
    T.Q5_1: ("affine", 31, Search(8, 0.5)),
}


def kmin_err(x, w, df, dmf, sc, mn, qmax, want_codes=False):
    dl = (df * sc.astype(F32)).astype(F32)
    ml = (dmf * mn.astype(F32)).astype(F32)
    idl = recip(dl, positive=True)
    hi = np.where(dl > 0, F32(qmax), F32(0)).astype(F32)
    c = code((x + ml[:, None]) * idl[:, None], F32(0), hi[:, None])
    if want_codes:
        return c
    dx = x - (dl[:, None] * c - ml[:, None])
    return lanes_sum(w * (dx * dx))


def kmin_encode(x: np.ndarray, w: np.ndarray, imp: int, k: KMin):
    nb = len(x)
    s = np.zeros((nb, k.nsub), F32)
    mneg = np.zeros((nb, k.nsub), F32)
    for j in range(k.nsub):
        sl = slice(j * k.sublen, (j + 1) * k.sublen)
        d, m = affine_fit(x[:, sl], w[:, sl], k.qmax, k.sp[imp], True)
        s[:, j] = d.astype(F32)
        mneg[:, j] = (-m).astype(F32)
    smax = np.where(s.max(axis=1) > 0, s.max(axis=1), F32(0)).astype(F32)
    mmax = np.where(mneg.max(axis=1) > 0, mneg.max(axis=1), F32(0)).astype(F32)
    d16 = f16_bits(smax / F32(k.fmax))
    dmin16 = f16_bits(mmax / F32(k.fmax))
    df, dmf = f16_value(d16), f16_value(dmin16)
    sc0 = code(s * recip(df, True)[:, None], F32(0), F32(k.fmax)).astype(np.int32)
    mn0 = code(mneg * recip(dmf, True)[:, None], F32(0), F32(k.fmax)).astype(np.int32)
    q = np.zeros((nb, QK_K), F32)
    sc = np.zeros((nb, k.nsub), np.int32)
    mn = np.zeros((nb, k.nsub), np.int32)
    for j in range(k.nsub):
        sl = slice(j * k.sublen, (j + 1) * k.sublen)
        best = np.full(nb, np.inf)
        bsc, bmn = sc0[:, j].copy(), mn0[:, j].copy()
        for c, (ds, dm) in enumerate([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]):
            cs, cm = sc0[:, j] + ds, mn0[:, j] + dm
            ok = (cs >= 0) & (cs <= k.fmax) & (cm >= 0) & (cm <= k.fmax)
            e = kmin_err(x[:, sl], w[:, sl], df, dmf, np.clip(cs, 0, k.fmax), np.clip(cm, 0, k.fmax), k.qmax)
            better = ok & ((e < best) | (c == 0))
            best = np.where(better, e, best)
            bsc = np.where(better, cs, bsc)
            bmn = np.where(better, cm, bmn)
        sc[:, j], mn[:, j] = bsc, bmn
        q[:, sl] = kmin_err(x[:, sl], w[:, sl], df, dmf, bsc, bmn, k.qmax, want_codes=True)
    return q, sc, mn, d16, dmin16


def ksym_err(x, w, df, sc, nlo, nhi, want_codes=False):
    dl = (df * sc.astype(F32)).astype(F32)
    c = code(x * recip(dl)[:, None], F32(-nlo), F32(nhi))
    if want_codes:
        return c
    dx = x - dl[:, None] * c
    return lanes_sum(w * (dx * dx))


def ksym_encode(x: np.ndarray, w: np.ndarray, imp: int, k: KSym):
    nb = len(x)
    s = np.stack(
        [
            sym_fit(x[:, 16 * j : 16 * j + 16], w[:, 16 * j : 16 * j + 16], k.nlo, k.nhi, k.sp[imp])
            for j in range(16)
        ],
        axis=1,
    ).astype(F32)
    v = signed_absmax(s)
    d16 = f16_bits(v / F32(-k.flo))
    df = f16_value(d16)
    sc0 = code(s * recip(df)[:, None], F32(-k.flo), F32(k.fhi)).astype(np.int32)
    q = np.zeros((nb, QK_K), F32)
    sc = np.zeros((nb, 16), np.int32)
    for j in range(16):
        sl = slice(16 * j, 16 * j + 16)
        best = np.full(nb, np.inf)
        bsc = sc0[:, j].copy()
        for c, ds in enumerate([0, -1, 1]):
            cs = sc0[:, j] + ds
            ok = (cs >= -k.flo) & (cs <= k.fhi)
            e = ksym_err(x[:, sl], w[:, sl], df, np.clip(cs, -k.flo, k.fhi), k.nlo, k.nhi)
            better = ok & ((e < best) | (c == 0))
            best = np.where(better, e, best)
            bsc = np.where(better, cs, bsc)
        sc[:, j] = bsc
        q[:, sl] = ksym_err(x[:, sl], w[:, sl], df, bsc, k.nlo, k.nhi, want_codes=True)
    return q.astype(np.int32), sc, d16


def _k_blocks(qtype: int, x: np.ndarray, w: np.ndarray, imp: int) -> np.ndarray:
    if qtype == T.Q2_K:
        q, sc, mn, d, dmin = kmin_encode(x, w, imp, Q2_K)
        return pack_q2_k(q.astype(np.int32), sc, mn, d, dmin)
    if qtype in (T.Q4_K, T.Q5_K):
        q, sc, mn, d, dmin = kmin_encode(x, w, imp, Q4_K if qtype == T.Q4_K else Q5_K)
        pack = pack_q4_k if qtype == T.Q4_K else pack_q5_k
        return pack(q.astype(np.int32), sc, mn, d, dmin)
    q, sc, d = ksym_encode(x, w, imp, Q3_K if qtype == T.Q3_K else Q6_K)
    return (pack_q3_k if qtype == T.Q3_K else pack_q6_k)(q, sc, d)


def _iq4_nl_blocks(x: np.ndarray, w: np.ndarray, imp: int) -> np.ndarray:
    s = nl_fit(x, w, IQ4_NL[imp])
    d16 = f16_bits(s.astype(F32))
    idx = np.searchsorted(NL_MID, x * recip(f16_value(d16))[:, None], side="left")
    return _u8(_d(d16), _nibbles(idx))


def _legacy_imp_blocks(qtype: int, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The importance blocks, and where they are candidates (a symmetric search
    that found no scale leaves the reference block)."""
    kind, rng, sp = LEGACY[qtype]
    if kind == "sym":
        nlo, nhi = rng
        s = sym_fit(x, w, nlo, nhi, sp)
        d16 = f16_bits(s.astype(F32))
        q = code(x * recip(f16_value(d16))[:, None], F32(-nlo), F32(nhi)).astype(np.int32)
        if qtype == T.Q8_0:
            return _u8(_d(d16), q.astype(np.int8)), s != 0
        u = (q + nlo).astype(np.uint8)
        if qtype == T.Q4_0:
            return _u8(_d(d16), _nibbles(u)), s != 0
        return _u8(_d(d16), _q5_high(u), _nibbles(u)), s != 0
    d, m = affine_fit(x, w, rng, sp, False)
    d16, m16 = f16_bits(d.astype(F32)), f16_bits(m.astype(F32))
    df, mf = f16_value(d16), f16_value(m16)
    u = code((x - mf[:, None]) * recip(df, True)[:, None], F32(0), F32(rng)).astype(np.uint8)
    valid = np.ones(len(x), bool)
    if qtype == T.Q4_1:
        return _u8(_d(d16), _d(m16), _nibbles(u)), valid
    return _u8(_d(d16), _d(m16), _q5_high(u), _nibbles(u)), valid


def dequantize_blocks(qtype: int, blocks: np.ndarray) -> np.ndarray:
    """(nblocks, block_size) float32 decoded by gguf-py (bit-exact with Lowbit's decoders)."""
    return np.asarray(gq.dequantize(np.ascontiguousarray(blocks).reshape(-1), qtype), F32).reshape(
        len(blocks), -1
    )


def weighted_block_error(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per block sum(w * (x - y)^2) in float64, summed in element order as the C code does."""
    dx = x.astype(F64) - y.astype(F64)
    return seq_sum(w.astype(F64) * dx * dx)


def _blocks(qtype: int, x: np.ndarray, w: np.ndarray, imp: int) -> tuple[np.ndarray, np.ndarray]:
    valid = np.ones(len(x), bool)
    if qtype == T.IQ4_NL:
        return _iq4_nl_blocks(x, w, imp), valid
    if qtype in LEGACY:
        if not imp:
            return np.asarray(gq.quantize(x, qtype)).reshape(len(x), -1), valid
        return _legacy_imp_blocks(qtype, x, w)
    return _k_blocks(qtype, x, w, imp), valid


def quantize(qtype: int, x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    """Encode the rows of x (2-D float32) as lb_quantize_rows does; returns (nrows, row_bytes) uint8."""
    x = np.ascontiguousarray(x, F32)
    nrows, n = x.shape
    bs = 256 if qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K) else 32
    xb = x.reshape(-1, bs)
    with np.errstate(all="ignore"):
        ref, _ = _blocks(qtype, xb, np.ones_like(xb), 0)
        if importance is None:
            return ref.reshape(nrows, -1)
        imp = np.asarray(importance, F32).reshape(1, n)
        imp = (imp / imp.max()).astype(F32) if imp.max() > 0 else np.zeros_like(imp)  # scale-free
        w = np.ascontiguousarray(np.broadcast_to(imp, x.shape).reshape(-1, bs))
        cand, valid = _blocks(qtype, xb, w, 1)
        er = weighted_block_error(xb, dequantize_blocks(qtype, ref), w)
        ec = weighted_block_error(xb, dequantize_blocks(qtype, cand), w)
        take = valid & np.isfinite(ec) & ((ec < er) | ~np.isfinite(er)) & (w != 0).any(axis=1)
    return np.where(take[:, None], cand, ref).reshape(nrows, -1)
