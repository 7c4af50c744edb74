/*
 * Weight encoders for every type Lowbit stores, with and without an importance
 * vector, and the row/thread driver behind lb_quantize_rows.
 *
 * Without importance:
 *   - Q4_0, Q4_1, Q5_0, Q5_1 (and Q8_0, in quants.c) are GGML's reference
 *     encoders and write the same bytes as gguf-py's quantize(): the scale comes
 *     from the signed value of largest magnitude (q4_0/q5_0) or from max - min
 *     (q4_1/q5_1), codes are trunc(x * (1/d) + 8.5) etc. with the unrounded d,
 *     and only then is d rounded to fp16. Every float operation below follows
 *     gguf-py's numpy code in type and order.
 *   - Q2_K ... Q6_K and IQ4_NL are Lowbit's own searches (below) with unit
 *     weights, i.e. they minimise the plain squared error.
 *
 * With importance w (one weight per column, scaled to a maximum of 1), every
 * quantized type runs the searches with those weights and keeps, block by
 * block, whichever of that result and the no-importance encoding has the
 * smaller weighted error sum w * (x - decoded)^2, measured on what the
 * dequantizer decodes. A block whose weights are all zero keeps the
 * no-importance encoding.
 *
 * The searches. Sym (codes -nlo..nhi, x ~ s*q): try inverse scales that send
 * the value of largest magnitude to either end of the code range, in small
 * steps inward; round; take the weighted least-squares scale for those codes,
 * s = sum(wxq)/sum(wqq), and keep the candidate with the largest
 * sum(wxq)^2/sum(wqq) (the error reduction). Then re-round with the best s and
 * refit while that improves. Affine (codes 0..qmax, x ~ d*q + m) does the same
 * from max - min with a 2x2 least-squares fit of (d, m), keeping m <= 0 for the
 * K-quants whose mins are unsigned. IQ4_NL (x ~ s * level) maps each value to
 * the nearest of its 16 levels. The K-quants then quantize the sub-block
 * scales (and mins) under the fp16 super-block scales d = max/63 etc., try the
 * neighbouring integer fields of each sub-block with its codes re-rounded, and
 * keep the fields with the least error under the decoder's own arithmetic.
 *
 * Rounding in the searches: to nearest with ties to even (lb_rint), the result
 * of rint() and of numpy's np.rint on float32. Sums run in a fixed pattern of
 * float partial sums (LB_LANES), decisions in double, so that the tests' numpy
 * mirror (tests/quant_ref.py) reproduces the bytes exactly.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "../kernels/kernels.h"
#include "lb_blocks.h"
#include "lb_internal.h"

#if defined(_WIN32)
#include <windows.h>
#else
#include <pthread.h>
#endif

/* The float operations must round exactly as written (as gguf-py's and the
 * tests' numpy code do): no fused multiply-adds. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* Blocks (or sub-block scales) below this magnitude encode as zeros: no fp16
 * scale can represent them, and it keeps 1/scale finite. */
#define LB_TINY 1e-30f
/* Re-round-and-refit rounds after the candidate search. */
#define LB_REFINE 2

/* Candidates of a search: ncand inverse scales, step apart (in code units).
 * The K-quants and IQ4_NL search twice as many, half as far apart, when they
 * have importance to use: that search is where the gain is, and the
 * no-importance encoding (the one most models get) must stay fast. */
typedef struct lb_search {
    int ncand;
    float step;
} lb_search;

/* Nearest integer, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves no
 * fraction bits. Callers clamp v to the code range first. */
static inline float lb_rint(float v) {
    const float magic = 12582912.0f;
    return (v + magic) - magic;
}

/* v clamped to [lo, hi] (integers) and rounded; the clamps are min/max
 * operations, so loops using this vectorize. NaN gives lo, so no caller ever
 * converts a NaN to int. */
static inline float lb_code(float v, float lo, float hi) {
    v = v > lo ? v : lo;
    v = v < hi ? v : hi;
    return lb_rint(v);
}

/* The sums over a block or sub-block (16 to 256 terms, products rounded to
 * float) run in LB_LANES interleaved float partial sums, element j into lane
 * j % LB_LANES, combined as (s0 + s1) + (s2 + s3): independent chains keep the
 * CPU busy and let the compiler vectorize, and the fixed order lets the numpy
 * mirror reproduce every bit. Decisions are then taken in double. */
#define LB_LANES 4

static inline float lb_lanes_sum(const float s[LB_LANES]) { return (s[0] + s[1]) + (s[2] + s[3]); }

/* ---- searches -------------------------------------------------------------- */

/* sum(w*q*x) and sum(w*q*q) for the codes of x * iscale in [lo, hi]. */
static inline void lb_sym_sums(const float *x, const float *w, int n, float iscale, float lo, float hi, double *sxq,
                               double *sqq) {
    float a[LB_LANES] = {0.0f}, b[LB_LANES] = {0.0f};
    for (int j = 0; j < n; j += LB_LANES) {
        const float *xj = x + j, *wj = w + j;
        for (int l = 0; l < LB_LANES; l++) {
            const float q = lb_code(xj[l] * iscale, lo, hi);
            const float wq = wj[l] * q;
            a[l] += wq * xj[l];
            b[l] += wq * q;
        }
    }
    *sxq = lb_lanes_sum(a);
    *sqq = lb_lanes_sum(b);
}

/* Keeps (score, s) = (a^2/b, a/b) if the score beats *best; 1 if it did. */
static inline int lb_keep_best(double a, double b, double *best, double *best_s) {
    if (!(b > 0.0)) {
        return 0;
    }
    const double score = a * a / b;
    if (!(score > *best)) {
        return 0;
    }
    *best = score;
    *best_s = a / b;
    return 1;
}

/* The first element of largest magnitude, with its sign: x[argmax |x|] as
 * numpy takes it (so an all-zero block gives its first zero, sign and all). */
static float lb_signed_absmax(const float *x, int n) {
    int k = 0;
    for (int j = 1; j < n; j++) {
        if (fabsf(x[j]) > fabsf(x[k])) {
            k = j;
        }
    }
    return x[k];
}

/* Best scale s for x ~ s * q, q in -nlo..nhi; 0 if nothing fits (tiny block,
 * or no weight on any nonzero code). */
static double lb_sym_fit(const float *x, const float *w, int n, int nlo, int nhi, lb_search sp) {
    const float v = lb_signed_absmax(x, n);
    if (fabsf(v) < LB_TINY) {
        return 0.0;
    }
    const float lo = -(float)nlo;
    const float hi = (float)nhi;
    double best = 0.0, best_s = 0.0, a, b;
    /* With a symmetric range the two ends give mirror-image candidates. */
    const int nside = nlo == nhi ? 1 : 2;
    for (int side = 0; side < nside; side++) {
        const float mag = side == 0 ? (float)nlo : (float)nhi;
        const float sgn = side == 0 ? -1.0f : 1.0f;
        for (int i = 0; i < sp.ncand; i++) {
            const float t = sgn * (mag + 0.5f - sp.step * (float)i);
            lb_sym_sums(x, w, n, t / v, lo, hi, &a, &b);
            lb_keep_best(a, b, &best, &best_s);
        }
    }
    for (int r = 0; r < LB_REFINE && best_s != 0.0; r++) {
        lb_sym_sums(x, w, n, (float)(1.0 / best_s), lo, hi, &a, &b);
        if (!lb_keep_best(a, b, &best, &best_s)) {
            break;
        }
    }
    return best_s;
}

typedef struct lb_affine_state {
    double sw, swx, swxx; /* fixed sums of the block */
    double best;          /* least error so far */
    double d, m;          /* its fit */
} lb_affine_state;

/* Codes of (x - off) * iscale in 0..qmax, their weighted least-squares (d, m),
 * kept in st if the error is the least so far. */
static void lb_affine_try(const float *x, const float *w, int n, float off, float iscale, int qmax, int m_nonpos,
                          lb_affine_state *st) {
    const float hi = (float)qmax;
    float s1[LB_LANES] = {0.0f}, s2[LB_LANES] = {0.0f}, s3[LB_LANES] = {0.0f};
    for (int j = 0; j < n; j += LB_LANES) {
        const float *xj = x + j, *wj = w + j;
        for (int l = 0; l < LB_LANES; l++) {
            const float q = lb_code((xj[l] - off) * iscale, 0.0f, hi);
            const float wq = wj[l] * q;
            s1[l] += wq;
            s2[l] += wq * q;
            s3[l] += wq * xj[l];
        }
    }
    const double swq = lb_lanes_sum(s1), swqq = lb_lanes_sum(s2), swxq = lb_lanes_sum(s3);
    const double det = st->sw * swqq - swq * swq;
    if (!(det > 0.0)) {
        return; /* fewer than two distinct weighted codes */
    }
    double d = (st->sw * swxq - swq * st->swx) / det;
    double m = (swqq * st->swx - swq * swxq) / det;
    if (m_nonpos && m > 0.0) {
        m = 0.0;
        d = swxq / swqq;
    }
    if (!(d > 0.0)) {
        return;
    }
    const double err = st->swxx - 2 * d * swxq - 2 * m * st->swx + d * d * swqq + 2 * d * m * swq + m * m * st->sw;
    if (err < st->best) {
        st->best = err;
        st->d = d;
        st->m = m;
    }
}

/* Best (d, m) for x ~ d * q + m, q in 0..qmax, d >= 0; m <= 0 if m_nonpos.
 * Falls back to the plain min-max fit when no candidate fits. */
static void lb_affine_fit(const float *x, const float *w, int n, int qmax, lb_search sp, int m_nonpos, double *d_out,
                          double *m_out) {
    float mn = x[0], mx = x[0];
    for (int j = 1; j < n; j++) {
        mn = x[j] < mn ? x[j] : mn;
        mx = x[j] > mx ? x[j] : mx;
    }
    if (m_nonpos && mn > 0.0f) {
        mn = 0.0f;
    }
    const float range = mx - mn;
    if (!(range >= LB_TINY)) {
        *d_out = 0.0;
        *m_out = mn;
        return;
    }
    float s1[LB_LANES] = {0.0f}, s2[LB_LANES] = {0.0f}, s3[LB_LANES] = {0.0f};
    for (int j = 0; j < n; j += LB_LANES) {
        const float *xj = x + j, *wj = w + j;
        for (int l = 0; l < LB_LANES; l++) {
            const float wx = wj[l] * xj[l];
            s1[l] += wj[l];
            s2[l] += wx;
            s3[l] += wx * xj[l];
        }
    }
    lb_affine_state st = {lb_lanes_sum(s1), lb_lanes_sum(s2), lb_lanes_sum(s3), INFINITY,
                          (double)(range / (float)qmax), (double)mn};
    for (int i = 0; i < sp.ncand; i++) {
        const float iscale = ((float)qmax + 0.5f - sp.step * (float)i) / range;
        lb_affine_try(x, w, n, mn, iscale, qmax, m_nonpos, &st);
    }
    for (int r = 0; r < LB_REFINE && st.best < INFINITY; r++) {
        const double prev = st.best;
        lb_affine_try(x, w, n, (float)st.m, (float)(1.0 / st.d), qmax, m_nonpos, &st);
        if (!(st.best < prev)) {
            break;
        }
    }
    *d_out = st.d;
    *m_out = st.m;
}

/* IQ4_NL: midpoints between neighbouring levels of lb_kvalues_iq4nl, and the
 * steps between the levels. */
static const float lb_nl_mid[15] = {-115.5f, -93.5f, -74.0f, -57.0f, -42.0f, -28.5f, -16.0f, -4.5f,
                                    7.0f,    19.0f,  31.5f,  45.5f,  61.0f,  79.0f,  101.0f};
static const float lb_nl_step[15] = {23.0f, 21.0f, 18.0f, 16.0f, 14.0f, 13.0f, 12.0f, 11.0f,
                                     12.0f, 12.0f, 13.0f, 15.0f, 16.0f, 20.0f, 24.0f};

/* Index of the level nearest to y, a tie going to the lower level: the number
 * of midpoints below y, by binary search. */
static inline int lb_nl_index(float y) {
    int i = y > lb_nl_mid[7] ? 8 : 0;
    i += y > lb_nl_mid[i + 3] ? 4 : 0;
    i += y > lb_nl_mid[i + 1] ? 2 : 0;
    i += y > lb_nl_mid[i] ? 1 : 0;
    return i;
}

/* The level nearest to y, the same one as lb_nl_index picks, summed from the
 * steps without a table lookup so that the loops using it vectorize; four
 * partial sums keep the additions (exact: small integers) off one chain. */
static inline float lb_nl_level(float y) {
#define LB_NL_STEP(k) (y > lb_nl_mid[k] ? lb_nl_step[k] : 0.0f)
    const float v0 = ((-127.0f + LB_NL_STEP(0)) + LB_NL_STEP(4)) + (LB_NL_STEP(8) + LB_NL_STEP(12));
    const float v1 = (LB_NL_STEP(1) + LB_NL_STEP(5)) + (LB_NL_STEP(9) + LB_NL_STEP(13));
    const float v2 = (LB_NL_STEP(2) + LB_NL_STEP(6)) + (LB_NL_STEP(10) + LB_NL_STEP(14));
    const float v3 = (LB_NL_STEP(3) + LB_NL_STEP(7)) + LB_NL_STEP(11);
#undef LB_NL_STEP
    return (v0 + v1) + (v2 + v3);
}

static inline void lb_nl_sums(const float *x, const float *w, int n, float iscale, double *sxk, double *skk) {
    float a[LB_LANES] = {0.0f}, b[LB_LANES] = {0.0f};
    for (int j = 0; j < n; j += LB_LANES) {
        const float *xj = x + j, *wj = w + j;
        for (int l = 0; l < LB_LANES; l++) {
            const float k = lb_nl_level(xj[l] * iscale);
            const float wk = wj[l] * k;
            a[l] += wk * xj[l];
            b[l] += wk * k;
        }
    }
    *sxk = lb_lanes_sum(a);
    *skk = lb_lanes_sum(b);
}

/* Best scale for x ~ s * level; candidates send the value of largest
 * magnitude to the lowest (-127) or highest (113) level, then inward. */
static double lb_nl_fit(const float *x, const float *w, int n, lb_search sp) {
    const float v = lb_signed_absmax(x, n);
    if (fabsf(v) < LB_TINY) {
        return 0.0;
    }
    double best = 0.0, best_s = 0.0, a, b;
    for (int side = 0; side < 2; side++) {
        const float mag = side == 0 ? 127.0f : 113.0f;
        const float sgn = side == 0 ? -1.0f : 1.0f;
        for (int i = 0; i < sp.ncand; i++) {
            const float t = sgn * (mag - sp.step * (float)i);
            lb_nl_sums(x, w, n, t / v, &a, &b);
            lb_keep_best(a, b, &best, &best_s);
        }
    }
    for (int r = 0; r < LB_REFINE && best_s != 0.0; r++) {
        lb_nl_sums(x, w, n, (float)(1.0 / best_s), &a, &b);
        if (!lb_keep_best(a, b, &best, &best_s)) {
            break;
        }
    }
    return best_s;
}

/* ---- search parameters per type ---------------------------------------------- */

static const lb_search lb_sp_q8_0 = {4, 0.5f};
static const lb_search lb_sp_q4_0 = {8, 0.25f};
static const lb_search lb_sp_q5_0 = {8, 0.5f};
static const lb_search lb_sp_q4_1 = {8, 0.25f};
static const lb_search lb_sp_q5_1 = {8, 0.5f};
static const lb_search lb_sp_iq4_nl[2] = {{4, 4.0f}, {8, 2.0f}};

/* ---- shared helpers ------------------------------------------------------------ */

static double lb_weighted_error(const float *x, const float *y, const float *w, int n) {
    double e = 0.0;
    for (int j = 0; j < n; j++) {
        const double dx = (double)x[j] - (double)y[j];
        e += (double)w[j] * dx * dx;
    }
    return e;
}

static int lb_all_zero(const float *w, int n) {
    for (int j = 0; j < n; j++) {
        if (w[j] != 0.0f) {
            return 0;
        }
    }
    return 1;
}

/* 1 if block `cand` has a smaller weighted error than block `ref` (both one
 * block of `type`, n elements), judged on what the dequantizer decodes. */
static int lb_block_better(int32_t type, const void *cand, const void *ref, const float *x, const float *w, int n) {
    float yc[LB_QK_K], yr[LB_QK_K];
    const lb_type_traits *t = lb_get_type_traits(type);
    t->to_float(cand, yc, n);
    t->to_float(ref, yr, n);
    const double ec = lb_weighted_error(x, yc, w, n);
    const double er = lb_weighted_error(x, yr, w, n);
    return isfinite(ec) && (ec < er || !isfinite(er));
}

static void lb_fill_ones(float *w, int n) {
    for (int j = 0; j < n; j++) {
        w[j] = 1.0f;
    }
}

/* ---- Q4_0, Q4_1, Q5_0, Q5_1: GGML's reference encoders ---------------------------- */

/* trunc(v) clamped to 0..hi, as numpy's trunc().astype(uint8).clip(0, hi) does
 * for the values these encoders produce (v >= 0 up to rounding); NaN gives 0. */
static inline int lb_trunc_code(float v, int hi) {
    if (!(v >= 1.0f)) {
        return 0;
    }
    if (v >= (float)hi) {
        return hi;
    }
    return (int)v;
}

static void lb_pack_nibbles(const uint8_t q[32], uint8_t qs[16]) {
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 15) | ((q[j + 16] & 15) << 4));
    }
}

static void lb_pack_q5_high(const uint8_t q[32], uint8_t qh[4]) {
    uint32_t h = 0;
    for (int j = 0; j < 32; j++) {
        h |= (uint32_t)((q[j] >> 4) & 1) << j;
    }
    for (int k = 0; k < 4; k++) {
        qh[k] = (uint8_t)(h >> (8 * k));
    }
}

/* q4_0 and q5_0: d = v / -2^(bits-1) for the signed absmax v, codes
 * trunc(x * (1/d) + 2^(bits-1) + 0.5). */
static uint16_t lb_ref_sym_codes(const float *x, int half, uint8_t q[32]) {
    const float d = lb_signed_absmax(x, 32) / -(float)half;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; j++) {
        q[j] = (uint8_t)lb_trunc_code(x[j] * id + ((float)half + 0.5f), 2 * half - 1);
    }
    return lb_fp32_to_fp16(d);
}

/* q4_1 and q5_1: d = (max - min) / levels, m = min, codes trunc((x - min) * (1/d) + 0.5). */
static uint16_t lb_ref_affine_codes(const float *x, int levels, uint8_t q[32], uint16_t *m16) {
    float mn = x[0], mx = x[0];
    for (int j = 1; j < 32; j++) {
        mn = x[j] < mn ? x[j] : mn;
        mx = x[j] > mx ? x[j] : mx;
    }
    const float d = (mx - mn) / (float)levels;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; j++) {
        q[j] = (uint8_t)lb_trunc_code((x[j] - mn) * id + 0.5f, levels);
    }
    *m16 = lb_fp32_to_fp16(mn);
    return lb_fp32_to_fp16(d);
}

void lb_quantize_row_q4_0_ref(const float *src, void *dst, int64_t n) {
    lb_block_q4_0 *y = dst;
    for (int64_t b = 0; b < n / LB_QK4_0; b++) {
        uint8_t q[32];
        y[b].d = lb_ref_sym_codes(src + b * LB_QK4_0, 8, q);
        lb_pack_nibbles(q, y[b].qs);
    }
}

void lb_quantize_row_q5_0_ref(const float *src, void *dst, int64_t n) {
    lb_block_q5_0 *y = dst;
    for (int64_t b = 0; b < n / LB_QK5_0; b++) {
        uint8_t q[32];
        y[b].d = lb_ref_sym_codes(src + b * LB_QK5_0, 16, q);
        lb_pack_q5_high(q, y[b].qh);
        lb_pack_nibbles(q, y[b].qs);
    }
}

void lb_quantize_row_q4_1_ref(const float *src, void *dst, int64_t n) {
    lb_block_q4_1 *y = dst;
    for (int64_t b = 0; b < n / LB_QK4_1; b++) {
        uint8_t q[32];
        y[b].d = lb_ref_affine_codes(src + b * LB_QK4_1, 15, q, &y[b].m);
        lb_pack_nibbles(q, y[b].qs);
    }
}

void lb_quantize_row_q5_1_ref(const float *src, void *dst, int64_t n) {
    lb_block_q5_1 *y = dst;
    for (int64_t b = 0; b < n / LB_QK5_1; b++) {
        uint8_t q[32];
        y[b].d = lb_ref_affine_codes(src + b * LB_QK5_1, 31, q, &y[b].m);
        lb_pack_q5_high(q, y[b].qh);
        lb_pack_nibbles(q, y[b].qs);
    }
}

/* ---- Q8_0, Q4_0, Q5_0, Q4_1, Q5_1 with importance ---------------------------------- */

/* Symmetric codes -nlo..nhi under the fp16 rounding of scale s; returns the
 * fp16 scale, q gets code + offset. */
static uint16_t lb_sym_block_codes(const float *x, double s, int nlo, int nhi, int offset, int *q) {
    const uint16_t d16 = lb_fp32_to_fp16((float)s);
    const float df = lb_fp16_to_fp32(d16);
    const float id = df != 0.0f ? 1.0f / df : 0.0f;
    for (int j = 0; j < 32; j++) {
        q[j] = (int)lb_code(x[j] * id, -(float)nlo, (float)nhi) + offset;
    }
    return d16;
}

void lb_quantize_row_q8_0_imp(const float *src, void *dst, int64_t n, const float *imp) {
    lb_block_q8_0 *y = dst;
    for (int64_t b = 0; b < n / LB_QK8_0; b++) {
        const float *x = src + b * LB_QK8_0;
        const float *w = imp + b * LB_QK8_0;
        lb_quantize_row_q8_0_ref(x, &y[b], LB_QK8_0);
        const double s = lb_all_zero(w, 32) ? 0.0 : lb_sym_fit(x, w, 32, 127, 127, lb_sp_q8_0);
        if (s == 0.0) {
            continue;
        }
        lb_block_q8_0 c;
        int q[32];
        c.d = lb_sym_block_codes(x, s, 127, 127, 0, q);
        for (int j = 0; j < 32; j++) {
            c.qs[j] = (int8_t)q[j];
        }
        if (lb_block_better(LB_TYPE_Q8_0, &c, &y[b], x, w, 32)) {
            y[b] = c;
        }
    }
}

void lb_quantize_row_q4_0_imp(const float *src, void *dst, int64_t n, const float *imp) {
    lb_block_q4_0 *y = dst;
    for (int64_t b = 0; b < n / LB_QK4_0; b++) {
        const float *x = src + b * LB_QK4_0;
        const float *w = imp + b * LB_QK4_0;
        lb_quantize_row_q4_0_ref(x, &y[b], LB_QK4_0);
        const double s = lb_all_zero(w, 32) ? 0.0 : lb_sym_fit(x, w, 32, 8, 7, lb_sp_q4_0);
        if (s == 0.0) {
            continue;
        }
        lb_block_q4_0 c;
        int q[32];
        uint8_t u[32];
        c.d = lb_sym_block_codes(x, s, 8, 7, 8, q);
        for (int j = 0; j < 32; j++) {
            u[j] = (uint8_t)q[j];
        }
        lb_pack_nibbles(u, c.qs);
        if (lb_block_better(LB_TYPE_Q4_0, &c, &y[b], x, w, 32)) {
            y[b] = c;
        }
    }
}

void lb_quantize_row_q5_0_imp(const float *src, void *dst, int64_t n, const float *imp) {
    lb_block_q5_0 *y = dst;
    for (int64_t b = 0; b < n / LB_QK5_0; b++) {
        const float *x = src + b * LB_QK5_0;
        const float *w = imp + b * LB_QK5_0;
        lb_quantize_row_q5_0_ref(x, &y[b], LB_QK5_0);
        const double s = lb_all_zero(w, 32) ? 0.0 : lb_sym_fit(x, w, 32, 16, 15, lb_sp_q5_0);
        if (s == 0.0) {
            continue;
        }
        lb_block_q5_0 c;
        int q[32];
        uint8_t u[32];
        c.d = lb_sym_block_codes(x, s, 16, 15, 16, q);
        for (int j = 0; j < 32; j++) {
            u[j] = (uint8_t)q[j];
        }
        lb_pack_q5_high(u, c.qh);
        lb_pack_nibbles(u, c.qs);
        if (lb_block_better(LB_TYPE_Q5_0, &c, &y[b], x, w, 32)) {
            y[b] = c;
        }
    }
}

/* Affine codes 0..qmax under the fp16 rounding of (d, m). */
static void lb_affine_block_codes(const float *x, double d, double m, int qmax, uint16_t *d16, uint16_t *m16,
                                  uint8_t q[32]) {
    *d16 = lb_fp32_to_fp16((float)d);
    *m16 = lb_fp32_to_fp16((float)m);
    const float df = lb_fp16_to_fp32(*d16);
    const float mf = lb_fp16_to_fp32(*m16);
    const float id = df > 0.0f ? 1.0f / df : 0.0f;
    for (int j = 0; j < 32; j++) {
        q[j] = (uint8_t)lb_code((x[j] - mf) * id, 0.0f, (float)qmax);
    }
}

void lb_quantize_row_q4_1_imp(const float *src, void *dst, int64_t n, const float *imp) {
    lb_block_q4_1 *y = dst;
    for (int64_t b = 0; b < n / LB_QK4_1; b++) {
        const float *x = src + b * LB_QK4_1;
        const float *w = imp + b * LB_QK4_1;
        lb_quantize_row_q4_1_ref(x, &y[b], LB_QK4_1);
        if (lb_all_zero(w, 32)) {
            continue;
        }
        double d, m;
        lb_affine_fit(x, w, 32, 15, lb_sp_q4_1, 0, &d, &m);
        lb_block_q4_1 c;
        uint8_t q[32];
        lb_affine_block_codes(x, d, m, 15, &c.d, &c.m, q);
        lb_pack_nibbles(q, c.qs);
        if (lb_block_better(LB_TYPE_Q4_1, &c, &y[b], x, w, 32)) {
            y[b] = c;
        }
    }
}

void lb_quantize_row_q5_1_imp(const float *src, void *dst, int64_t n, const float *imp) {
    lb_block_q5_1 *y = dst;
    for (int64_t b = 0; b < n / LB_QK5_1; b++) {
        const float *x = src + b * LB_QK5_1;
        const float *w = imp + b * LB_QK5_1;
        lb_quantize_row_q5_1_ref(x, &y[b], LB_QK5_1);
        if (lb_all_zero(w, 32)) {
            continue;
        }
        double d, m;
        lb_affine_fit(x, w, 32, 31, lb_sp_q5_1, 0, &d, &m);
        lb_block_q5_1 c;
        uint8_t q[32];
        lb_affine_block_codes(x, d, m, 31, &c.d, &c.m, q);
        lb_pack_q5_high(q, c.qh);
        lb_pack_nibbles(q, c.qs);
        if (lb_block_better(LB_TYPE_Q5_1, &c, &y[b], x, w, 32)) {
            y[b] = c;
        }
    }
}

/* ---- IQ4_NL -------------------------------------------------------------------- */

static void lb_iq4_nl_block(const float *x, const float *w, int imp, lb_block_iq4_nl *y) {
    const double s = lb_nl_fit(x, w, 32, lb_sp_iq4_nl[imp]);
    y->d = lb_fp32_to_fp16((float)s);
    const float df = lb_fp16_to_fp32(y->d);
    const float id = df != 0.0f ? 1.0f / df : 0.0f;
    uint8_t q[32];
    for (int j = 0; j < 32; j++) {
        q[j] = (uint8_t)lb_nl_index(x[j] * id);
    }
    lb_pack_nibbles(q, y->qs);
}

void lb_quantize_row_iq4_nl_ref(const float *src, void *dst, int64_t n) {
    lb_block_iq4_nl *y = dst;
    float ones[32];
    lb_fill_ones(ones, 32);
    for (int64_t b = 0; b < n / LB_QK4_NL; b++) {
        lb_iq4_nl_block(src + b * LB_QK4_NL, ones, 0, &y[b]);
    }
}

void lb_quantize_row_iq4_nl_imp(const float *src, void *dst, int64_t n, const float *imp) {
    lb_block_iq4_nl *y = dst;
    float ones[32];
    lb_fill_ones(ones, 32);
    for (int64_t b = 0; b < n / LB_QK4_NL; b++) {
        const float *x = src + b * LB_QK4_NL;
        const float *w = imp + b * LB_QK4_NL;
        lb_iq4_nl_block(x, ones, 0, &y[b]);
        if (lb_all_zero(w, 32)) {
            continue;
        }
        lb_block_iq4_nl c;
        lb_iq4_nl_block(x, w, 1, &c);
        if (lb_block_better(LB_TYPE_IQ4_NL, &c, &y[b], x, w, 32)) {
            y[b] = c;
        }
    }
}

/* ---- K-quants with mins: Q2_K, Q4_K, Q5_K ---------------------------------------------- */

typedef struct lb_kmin_spec {
    int nsub, sublen; /* sub-blocks of the 256 and their length */
    int qmax;         /* codes 0..qmax */
    int fmax;         /* sub-block scale and min fields 0..fmax */
    lb_search sp[2];  /* without, with importance */
} lb_kmin_spec;

typedef struct lb_kmin_result {
    uint16_t d, dmin;
    uint8_t sc[16], mn[16];
    uint8_t q[LB_QK_K];
} lb_kmin_result;

/* Weighted error of one sub-block for the integer fields (sc, mn), its codes
 * rounded, with the decoder's arithmetic: y = (d * sc) * q - dmin * mn. With
 * q != NULL, also stores the codes (kept out of the error loop so that it
 * vectorizes). */
static double lb_kmin_try(const float *x, const float *w, int n, float df, float dmf, int sc, int mn, int qmax,
                          uint8_t *q) {
    const float dl = df * (float)sc;
    const float ml = dmf * (float)mn;
    const float idl = dl > 0.0f ? 1.0f / dl : 0.0f;
    const float hi = dl > 0.0f ? (float)qmax : 0.0f;
    if (q != NULL) {
        for (int j = 0; j < n; j++) {
            q[j] = (uint8_t)lb_code((x[j] + ml) * idl, 0.0f, hi);
        }
        return 0.0;
    }
    float e[LB_LANES] = {0.0f};
    for (int j = 0; j < n; j += LB_LANES) {
        const float *xj = x + j, *wj = w + j;
        for (int l = 0; l < LB_LANES; l++) {
            const float c = lb_code((xj[l] + ml) * idl, 0.0f, hi);
            const float dx = xj[l] - (dl * c - ml);
            e[l] += wj[l] * (dx * dx);
        }
    }
    return lb_lanes_sum(e);
}

static void lb_kmin_encode(const float *x, const float *w, int imp, const lb_kmin_spec *k, lb_kmin_result *r) {
    float s[16], m[16];
    float smax = 0.0f, mmax = 0.0f;
    for (int j = 0; j < k->nsub; j++) {
        double dd, mm;
        lb_affine_fit(x + j * k->sublen, w + j * k->sublen, k->sublen, k->qmax, k->sp[imp], 1, &dd, &mm);
        s[j] = (float)dd;
        m[j] = (float)-mm;
        smax = s[j] > smax ? s[j] : smax;
        mmax = m[j] > mmax ? m[j] : mmax;
    }
    r->d = lb_fp32_to_fp16(smax / (float)k->fmax);
    r->dmin = lb_fp32_to_fp16(mmax / (float)k->fmax);
    const float df = lb_fp16_to_fp32(r->d);
    const float dmf = lb_fp16_to_fp32(r->dmin);
    const float id = df > 0.0f ? 1.0f / df : 0.0f;
    const float idm = dmf > 0.0f ? 1.0f / dmf : 0.0f;
    const float fhi = (float)k->fmax;
    for (int j = 0; j < k->nsub; j++) {
        const float *xs = x + j * k->sublen;
        const float *ws = w + j * k->sublen;
        uint8_t *qs = r->q + j * k->sublen;
        const int sc0 = (int)lb_code(s[j] * id, 0.0f, fhi);
        const int mn0 = (int)lb_code(m[j] * idm, 0.0f, fhi);
        /* the rounded fields, then their neighbours */
        static const int dsc[5] = {0, -1, 1, 0, 0};
        static const int dmn[5] = {0, 0, 0, -1, 1};
        double best = INFINITY;
        int bsc = sc0, bmn = mn0;
        for (int c = 0; c < 5; c++) {
            const int sc = sc0 + dsc[c];
            const int mn = mn0 + dmn[c];
            if (sc < 0 || sc > k->fmax || mn < 0 || mn > k->fmax) {
                continue;
            }
            const double e = lb_kmin_try(xs, ws, k->sublen, df, dmf, sc, mn, k->qmax, NULL);
            if (e < best || c == 0) {
                best = e;
                bsc = sc;
                bmn = mn;
            }
        }
        r->sc[j] = (uint8_t)bsc;
        r->mn[j] = (uint8_t)bmn;
        lb_kmin_try(xs, ws, k->sublen, df, dmf, bsc, bmn, k->qmax, qs);
    }
}

static const lb_kmin_spec lb_spec_q2_K = {16, 16, 3, 15, {{4, 0.25f}, {8, 0.125f}}};
static const lb_kmin_spec lb_spec_q4_K = {8, 32, 15, 63, {{4, 0.5f}, {8, 0.25f}}};
static const lb_kmin_spec lb_spec_q5_K = {8, 32, 31, 63, {{4, 1.0f}, {8, 0.5f}}};

static void lb_pack_q2_K(const lb_kmin_result *r, lb_block_q2_K *y) {
    for (int j = 0; j < 16; j++) {
        y->scales[j] = (uint8_t)(r->sc[j] | (r->mn[j] << 4));
    }
    for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 32; l++) {
            const uint8_t *q = r->q + 128 * h + l;
            y->qs[32 * h + l] = (uint8_t)(q[0] | (q[32] << 2) | (q[64] << 4) | (q[96] << 6));
        }
    }
    y->d = r->d;
    y->dmin = r->dmin;
}

static void lb_pack_scales_k4(const uint8_t sc[8], const uint8_t mn[8], uint8_t b[LB_K_SCALE_SIZE]) {
    for (int j = 0; j < 4; j++) {
        b[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        b[j + 4] = (uint8_t)(mn[j] | ((mn[j + 4] >> 4) << 6));
        b[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
}

static void lb_pack_q4_K(const lb_kmin_result *r, lb_block_q4_K *y) {
    y->d = r->d;
    y->dmin = r->dmin;
    lb_pack_scales_k4(r->sc, r->mn, y->scales);
    for (int c = 0; c < 4; c++) {
        for (int l = 0; l < 32; l++) {
            y->qs[32 * c + l] = (uint8_t)((r->q[64 * c + l] & 15) | ((r->q[64 * c + 32 + l] & 15) << 4));
        }
    }
}

static void lb_pack_q5_K(const lb_kmin_result *r, lb_block_q5_K *y) {
    y->d = r->d;
    y->dmin = r->dmin;
    lb_pack_scales_k4(r->sc, r->mn, y->scales);
    for (int c = 0; c < 4; c++) {
        for (int l = 0; l < 32; l++) {
            y->qs[32 * c + l] = (uint8_t)((r->q[64 * c + l] & 15) | ((r->q[64 * c + 32 + l] & 15) << 4));
        }
    }
    for (int l = 0; l < 32; l++) {
        uint8_t h = 0;
        for (int k = 0; k < 8; k++) {
            h |= (uint8_t)(((r->q[32 * k + l] >> 4) & 1) << k);
        }
        y->qh[l] = h;
    }
}

/* ---- K-quants with signed sub-block scales: Q3_K, Q6_K --------------------------------- */

typedef struct lb_ksym_spec {
    int nlo, nhi;     /* codes -nlo..nhi */
    int flo, fhi;     /* sub-block scale fields -flo..fhi */
    lb_search sp[2];  /* without, with importance */
} lb_ksym_spec;

typedef struct lb_ksym_result {
    uint16_t d;
    int8_t sc[16];
    int8_t q[LB_QK_K];
} lb_ksym_result;

/* Weighted error of one 16-element sub-block for the field sc, its codes
 * rounded, with the decoder's arithmetic y = (d * sc) * q; with q != NULL,
 * stores the codes instead. */
static double lb_ksym_try(const float *x, const float *w, float df, int sc, int nlo, int nhi, int8_t *q) {
    const float dl = df * (float)sc;
    const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
    const float lo = -(float)nlo, hi = (float)nhi;
    if (q != NULL) {
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)lb_code(x[j] * idl, lo, hi);
        }
        return 0.0;
    }
    float e[LB_LANES] = {0.0f};
    for (int j = 0; j < 16; j += LB_LANES) {
        const float *xj = x + j, *wj = w + j;
        for (int l = 0; l < LB_LANES; l++) {
            const float c = lb_code(xj[l] * idl, lo, hi);
            const float dx = xj[l] - dl * c;
            e[l] += wj[l] * (dx * dx);
        }
    }
    return lb_lanes_sum(e);
}

static void lb_ksym_encode(const float *x, const float *w, int imp, const lb_ksym_spec *k, lb_ksym_result *r) {
    float s[16];
    float amax = 0.0f, v = 0.0f;
    for (int j = 0; j < 16; j++) {
        s[j] = (float)lb_sym_fit(x + 16 * j, w + 16 * j, 16, k->nlo, k->nhi, k->sp[imp]);
        if (fabsf(s[j]) > amax) {
            amax = fabsf(s[j]);
            v = s[j];
        }
    }
    r->d = lb_fp32_to_fp16(v / -(float)k->flo);
    const float df = lb_fp16_to_fp32(r->d);
    const float id = df != 0.0f ? 1.0f / df : 0.0f;
    for (int j = 0; j < 16; j++) {
        const int sc0 = (int)lb_code(s[j] * id, -(float)k->flo, (float)k->fhi);
        double best = INFINITY;
        int bsc = sc0;
        for (int c = 0; c < 3; c++) {
            const int sc = sc0 + (c == 0 ? 0 : c == 1 ? -1 : 1);
            if (sc < -k->flo || sc > k->fhi) {
                continue;
            }
            const double e = lb_ksym_try(x + 16 * j, w + 16 * j, df, sc, k->nlo, k->nhi, NULL);
            if (e < best || c == 0) {
                best = e;
                bsc = sc;
            }
        }
        r->sc[j] = (int8_t)bsc;
        lb_ksym_try(x + 16 * j, w + 16 * j, df, bsc, k->nlo, k->nhi, r->q + 16 * j);
    }
}

static const lb_ksym_spec lb_spec_q3_K = {4, 3, 32, 31, {{4, 0.25f}, {8, 0.125f}}};
static const lb_ksym_spec lb_spec_q6_K = {32, 31, 128, 127, {{4, 1.0f}, {8, 1.0f}}};

static void lb_pack_q3_K(const lb_ksym_result *r, lb_block_q3_K *y) {
    uint8_t u[LB_QK_K];
    for (int i = 0; i < LB_QK_K; i++) {
        u[i] = (uint8_t)(r->q[i] + 4); /* 0..7: low 2 bits in qs, bit 2 in hmask */
    }
    for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 32; l++) {
            const uint8_t *q = u + 128 * h + l;
            y->qs[32 * h + l] = (uint8_t)((q[0] & 3) | ((q[32] & 3) << 2) | ((q[64] & 3) << 4) | ((q[96] & 3) << 6));
        }
    }
    for (int l = 0; l < 32; l++) {
        uint8_t m = 0;
        for (int k = 0; k < 8; k++) {
            m |= (uint8_t)((u[32 * k + l] >> 2) << k);
        }
        y->hmask[l] = m;
    }
    memset(y->scales, 0, sizeof y->scales);
    for (int j = 0; j < 16; j++) {
        const int f = r->sc[j] + 32;
        y->scales[j % 8] |= (uint8_t)((f & 15) << (j < 8 ? 0 : 4));
        y->scales[8 + j % 4] |= (uint8_t)((f >> 4) << (2 * (j / 4)));
    }
    y->d = r->d;
}

static void lb_pack_q6_K(const lb_ksym_result *r, lb_block_q6_K *y) {
    uint8_t u[LB_QK_K];
    for (int i = 0; i < LB_QK_K; i++) {
        u[i] = (uint8_t)(r->q[i] + 32);
    }
    for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 64; l++) {
            y->ql[64 * h + l] = (uint8_t)((u[128 * h + l] & 15) | ((u[128 * h + 64 + l] & 15) << 4));
        }
        for (int l = 0; l < 32; l++) {
            const uint8_t *q = u + 128 * h + l;
            y->qh[32 * h + l] =
                (uint8_t)((q[0] >> 4) | ((q[32] >> 4) << 2) | ((q[64] >> 4) << 4) | ((q[96] >> 4) << 6));
        }
    }
    for (int j = 0; j < 16; j++) {
        y->scales[j] = r->sc[j];
    }
    y->d = r->d;
}

/* ---- K-quant row functions ----------------------------------------------------------------- */

static void lb_q2_K_block(const float *x, const float *w, int imp, void *y) {
    lb_kmin_result r;
    lb_kmin_encode(x, w, imp, &lb_spec_q2_K, &r);
    lb_pack_q2_K(&r, y);
}

static void lb_q4_K_block(const float *x, const float *w, int imp, void *y) {
    lb_kmin_result r;
    lb_kmin_encode(x, w, imp, &lb_spec_q4_K, &r);
    lb_pack_q4_K(&r, y);
}

static void lb_q5_K_block(const float *x, const float *w, int imp, void *y) {
    lb_kmin_result r;
    lb_kmin_encode(x, w, imp, &lb_spec_q5_K, &r);
    lb_pack_q5_K(&r, y);
}

static void lb_q3_K_block(const float *x, const float *w, int imp, void *y) {
    lb_ksym_result r;
    lb_ksym_encode(x, w, imp, &lb_spec_q3_K, &r);
    lb_pack_q3_K(&r, y);
}

static void lb_q6_K_block(const float *x, const float *w, int imp, void *y) {
    lb_ksym_result r;
    lb_ksym_encode(x, w, imp, &lb_spec_q6_K, &r);
    lb_pack_q6_K(&r, y);
}

typedef void (*lb_k_block_fn)(const float *x, const float *w, int imp, void *y);

static void lb_k_row_ref(lb_k_block_fn fn, size_t bsize, const float *src, void *dst, int64_t n) {
    float ones[LB_QK_K];
    lb_fill_ones(ones, LB_QK_K);
    for (int64_t b = 0; b < n / LB_QK_K; b++) {
        fn(src + b * LB_QK_K, ones, 0, (char *)dst + (size_t)b * bsize);
    }
}

/* The no-importance block, replaced by the importance search's where that has
 * the smaller weighted error. */
static void lb_k_row_imp(int32_t type, lb_k_block_fn fn, size_t bsize, const float *src, void *dst, int64_t n,
                         const float *imp) {
    float ones[LB_QK_K];
    lb_fill_ones(ones, LB_QK_K);
    union {
        lb_block_q2_K q2;
        lb_block_q3_K q3;
        lb_block_q4_K q4;
        lb_block_q5_K q5;
        lb_block_q6_K q6;
    } c;
    for (int64_t b = 0; b < n / LB_QK_K; b++) {
        const float *x = src + b * LB_QK_K;
        const float *w = imp + b * LB_QK_K;
        void *y = (char *)dst + (size_t)b * bsize;
        fn(x, ones, 0, y);
        if (lb_all_zero(w, LB_QK_K)) {
            continue;
        }
        fn(x, w, 1, &c);
        if (lb_block_better(type, &c, y, x, w, LB_QK_K)) {
            memcpy(y, &c, bsize);
        }
    }
}

#define LB_K_ROW_FUNCS(name, TYPE)                                                                       \
    void lb_quantize_row_##name##_ref(const float *src, void *dst, int64_t n) {                        \
        lb_k_row_ref(lb_##name##_block, sizeof(lb_block_##name), src, dst, n);                         \
    }                                                                                                  \
    void lb_quantize_row_##name##_imp(const float *src, void *dst, int64_t n, const float *imp) {      \
        lb_k_row_imp(TYPE, lb_##name##_block, sizeof(lb_block_##name), src, dst, n, imp);              \
    }

LB_K_ROW_FUNCS(q2_K, LB_TYPE_Q2_K)
LB_K_ROW_FUNCS(q3_K, LB_TYPE_Q3_K)
LB_K_ROW_FUNCS(q4_K, LB_TYPE_Q4_K)
LB_K_ROW_FUNCS(q5_K, LB_TYPE_Q5_K)
LB_K_ROW_FUNCS(q6_K, LB_TYPE_Q6_K)

/* ---- checks of the encoded output ------------------------------------------------------------ */

/* Byte offsets of the fp16 scale fields of a block type; returns how many. */
static int lb_fp16_fields(int32_t type, size_t off[2]) {
    switch (type) {
    case LB_TYPE_Q4_0:
    case LB_TYPE_Q5_0:
    case LB_TYPE_Q8_0:
    case LB_TYPE_IQ4_NL:
        off[0] = 0;
        return 1;
    case LB_TYPE_Q4_1:
    case LB_TYPE_Q5_1:
        off[0] = offsetof(lb_block_q4_1, d);
        off[1] = offsetof(lb_block_q4_1, m);
        return 2;
    case LB_TYPE_Q2_K:
        off[0] = offsetof(lb_block_q2_K, d);
        off[1] = offsetof(lb_block_q2_K, dmin);
        return 2;
    case LB_TYPE_Q3_K:
        off[0] = offsetof(lb_block_q3_K, d);
        return 1;
    case LB_TYPE_Q4_K:
    case LB_TYPE_Q5_K:
        off[0] = offsetof(lb_block_q4_K, d);
        off[1] = offsetof(lb_block_q4_K, dmin);
        return 2;
    case LB_TYPE_Q6_K:
        off[0] = offsetof(lb_block_q6_K, d);
        return 1;
    default:
        return 0;
    }
}

_Static_assert(offsetof(lb_block_q5_1, d) == offsetof(lb_block_q4_1, d) &&
                   offsetof(lb_block_q5_1, m) == offsetof(lb_block_q4_1, m),
               "q4_1 and q5_1 keep d and m in the same place");
_Static_assert(offsetof(lb_block_q5_K, d) == offsetof(lb_block_q4_K, d) &&
                   offsetof(lb_block_q5_K, dmin) == offsetof(lb_block_q4_K, dmin),
               "q4_K and q5_K keep d and dmin in the same place");

/* Index of the first element (F16, BF16) or block whose encoding holds an
 * infinite fp16/bf16 value, or -1. */
static int64_t lb_first_overflow(int32_t type, const lb_type_traits *t, const void *row, int64_t n) {
    const uint8_t *p = row;
    if (type == LB_TYPE_F16 || type == LB_TYPE_BF16) {
        const uint16_t mask = type == LB_TYPE_F16 ? 0x7c00u : 0x7f80u;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            if ((h & mask) == mask) {
                return i;
            }
        }
        return -1;
    }
    size_t off[2];
    const int nf = lb_fp16_fields(type, off);
    const int64_t nb = n / t->blck_size;
    for (int64_t b = 0; b < nb; b++) {
        for (int f = 0; f < nf; f++) {
            uint16_t h;
            memcpy(&h, p + (size_t)b * t->type_size + off[f], 2);
            if ((h & 0x7c00u) == 0x7c00u) {
                return b;
            }
        }
    }
    return -1;
}

static float lb_absmax_of(const float *x, int64_t n) {
    float amax = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    }
    return amax;
}

/* ---- the row driver -------------------------------------------------------------------------- */

enum { LB_ROW_OK = 0, LB_ROW_NOT_FINITE = 1, LB_ROW_OVERFLOW = 2 };

typedef struct lb_row_fault {
    int kind;
    int64_t row, index; /* index: element (not finite, F16/BF16 overflow) or block */
} lb_row_fault;

typedef struct lb_qjob {
    int32_t type;
    const lb_type_traits *t;
    const float *src;
    int64_t nrows, n;
    size_t row_bytes;
    const float *imp;
    char *dst;
    int64_t rows_per_task, n_tasks;
    atomic_llong next_task;
    lb_row_fault *faults; /* one per task */
} lb_qjob;

static void lb_quantize_task(lb_qjob *job, int64_t task) {
    const int64_t r0 = task * job->rows_per_task;
    const int64_t r1 = r0 + job->rows_per_task < job->nrows ? r0 + job->rows_per_task : job->nrows;
    lb_row_fault *f = &job->faults[task];
    for (int64_t r = r0; r < r1; r++) {
        const float *x = job->src + r * job->n;
        void *y = job->dst + (size_t)r * job->row_bytes;
        for (int64_t i = 0; i < job->n; i++) {
            if (!isfinite(x[i])) {
                f->kind = LB_ROW_NOT_FINITE;
                f->row = r;
                f->index = i;
                return;
            }
        }
        if (job->imp != NULL) {
            job->t->quantize_imp(x, y, job->n, job->imp);
        } else {
            job->t->from_float(x, y, job->n);
        }
        const int64_t bad = lb_first_overflow(job->type, job->t, y, job->n);
        if (bad >= 0) {
            f->kind = LB_ROW_OVERFLOW;
            f->row = r;
            f->index = bad;
            return;
        }
    }
}

/* Each thread claims tasks until none is left. Tasks take a millisecond or
 * so, so plain threads started for the call do: no pool, no spinning (which
 * would only burn a core that another thread of the call is waiting for). */
static void lb_quantize_worker(lb_qjob *job) {
    for (;;) {
        const int64_t task = (int64_t)atomic_fetch_add(&job->next_task, 1);
        if (task >= job->n_tasks) {
            return;
        }
        lb_quantize_task(job, task);
    }
}

#if defined(_WIN32)
typedef HANDLE lb_qthread;
static DWORD WINAPI lb_qthread_main(LPVOID arg) {
    lb_quantize_worker((lb_qjob *)arg);
    return 0;
}
static int lb_qthread_start(lb_qthread *th, lb_qjob *job) {
    *th = CreateThread(NULL, 0, lb_qthread_main, job, 0, NULL);
    return *th != NULL;
}
static void lb_qthread_join(lb_qthread th) {
    WaitForSingleObject(th, INFINITE);
    CloseHandle(th);
}
#else
typedef pthread_t lb_qthread;
static void *lb_qthread_main(void *arg) {
    lb_quantize_worker((lb_qjob *)arg);
    return NULL;
}
static int lb_qthread_start(lb_qthread *th, lb_qjob *job) {
    return pthread_create(th, NULL, lb_qthread_main, job) == 0;
}
static void lb_qthread_join(lb_qthread th) { pthread_join(th, NULL); }
#endif

/* Rows per task: about 64K weights, so that tasks balance over the threads
 * and a task's overhead stays negligible. */
#define LB_TASK_WEIGHTS 65536

lb_status lb_encode_rows(const char *fn, int32_t type, const float *src, int64_t nrows, int64_t n, size_t row_bytes,
                         const float *imp, void *dst, int n_threads) {
    const lb_type_traits *t = lb_get_type_traits(type);
    if (t == NULL || t->from_float == NULL) {
        return lb_fail(LB_ERR_INTERNAL, "%s: type %d has no encoder", fn, (int)type);
    }
    lb_qjob job;
    memset(&job, 0, sizeof job);
    job.type = type;
    job.t = t;
    job.src = src;
    job.nrows = nrows;
    job.n = n;
    job.row_bytes = row_bytes;
    job.dst = dst;
    job.rows_per_task = n >= LB_TASK_WEIGHTS ? 1 : LB_TASK_WEIGHTS / n;
    job.n_tasks = (nrows + job.rows_per_task - 1) / job.rows_per_task;
    atomic_init(&job.next_task, 0);
    const int64_t n_tasks = job.n_tasks;
    if ((uint64_t)n_tasks > SIZE_MAX / sizeof(lb_row_fault)) {
        return lb_fail(LB_ERR_OUT_OF_MEMORY, "%s: too many rows (%lld)", fn, (long long)nrows);
    }
    job.faults = calloc((size_t)n_tasks, sizeof(lb_row_fault));
    if (job.faults == NULL) {
        return lb_fail(LB_ERR_OUT_OF_MEMORY, "%s: cannot allocate the task table for %lld rows", fn,
                       (long long)nrows);
    }
    /* Importance only matters relative to itself: scale it to a maximum of 1,
     * so that the float sums of the searches cannot overflow however large
     * the caller's weights are. */
    float *wnorm = NULL;
    if (imp != NULL && t->quantize_imp != NULL) {
        float wmax = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            wmax = imp[i] > wmax ? imp[i] : wmax;
        }
        wnorm = malloc((size_t)n * sizeof(float));
        if (wnorm == NULL) {
            free(job.faults);
            return lb_fail(LB_ERR_OUT_OF_MEMORY, "%s: cannot allocate %lld importance weights", fn, (long long)n);
        }
        for (int64_t i = 0; i < n; i++) {
            wnorm[i] = wmax > 0.0f ? imp[i] / wmax : 0.0f;
        }
        job.imp = wnorm;
    }
    /* The calling thread is one of the workers. A thread that cannot be
     * started only means fewer helpers: the work gets done all the same. */
    const int use = n_tasks < (int64_t)n_threads ? (int)n_tasks : n_threads;
    lb_qthread threads[LB_MAX_THREADS];
    int started = 0;
    while (started < use - 1 && lb_qthread_start(&threads[started], &job)) {
        started++;
    }
    lb_quantize_worker(&job);
    for (int i = 0; i < started; i++) {
        lb_qthread_join(threads[i]);
    }
    lb_status st = LB_OK;
    for (int64_t k = 0; k < n_tasks && st == LB_OK; k++) {
        const lb_row_fault *f = &job.faults[k];
        const float *x = src + f->row * n;
        if (f->kind == LB_ROW_NOT_FINITE) {
            st = lb_fail(LB_ERR_INVALID_ARGUMENT,
                         "%s: src[%lld] = %g (row %lld, column %lld) is not finite; %s weights must be", fn,
                         (long long)(f->row * n + f->index), (double)x[f->index], (long long)f->row,
                         (long long)f->index, t->name);
        } else if (f->kind == LB_ROW_OVERFLOW && t->blck_size == 1) {
            st = lb_fail(LB_ERR_INVALID_ARGUMENT,
                         "%s: src[%lld] = %g (row %lld, column %lld) is beyond the %s range and would become "
                         "infinite",
                         fn, (long long)(f->row * n + f->index), (double)x[f->index], (long long)f->row,
                         (long long)f->index, t->name);
        } else if (f->kind == LB_ROW_OVERFLOW) {
            st = lb_fail(LB_ERR_INVALID_ARGUMENT,
                         "%s: row %lld, block %lld has max |x| = %g, beyond the %s range (an fp16 scale of the "
                         "block would overflow 65504)",
                         fn, (long long)f->row, (long long)f->index,
                         (double)lb_absmax_of(x + f->index * t->blck_size, t->blck_size), t->name);
        }
    }
    free(job.faults);
    free(wnorm);
    return st;
}
