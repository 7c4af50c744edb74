/*
 * Portable scalar dot-product kernels: one per weight type, against that
 * type's activation format. They are the reference every SIMD kernel must
 * reproduce, so they favour plain loops over speed.
 *
 * Within a block the products of integer quants are summed exactly in int32
 * (the largest possible sum, q6_K's, stays below 2^28); each block's integer
 * sum is then scaled once in float and added to the row's sum in block order.
 * The SIMD paths of the quantized types repeat exactly those float steps, so
 * they agree with these bit for bit; the float types' SIMD kernels sum in
 * their own order and agree to rounding.
 * The minimum terms of q2_K/q4_K/q5_K use q8_K's bsums, as GGML does, so an
 * optimised kernel needs no second pass over the activations.
 */
#include <math.h>

#include "kernels.h"
#include "lb_internal.h"

/* Every SIMD path reproduces the quantized kernels' float steps exactly, so
 * the reference must not fuse them into multiply-adds where the target has
 * FMA (GCC does so at -std=gnu11, e.g. on arm64). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

const int8_t lb_kvalues_iq4nl[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

/* ---- float weights against float activations ----------------------------
 * Products of two floats are exact in double, and a double sum keeps long
 * rows (n in the thousands) accurate to well under a float ulp. */

void lb_vec_dot_f32_f32(int64_t n, float *s, const void *w, const void *a) {
    const float *x = w;
    const float *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += (double)x[i] * (double)y[i];
    }
    *s = (float)sum;
}

void lb_vec_dot_f16_f32(int64_t n, float *s, const void *w, const void *a) {
    const uint16_t *x = w;
    const float *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += (double)lb_fp16_to_fp32(x[i]) * (double)y[i];
    }
    *s = (float)sum;
}

void lb_vec_dot_bf16_f32(int64_t n, float *s, const void *w, const void *a) {
    const uint16_t *x = w;
    const float *y = a;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum += (double)lb_bf16_to_fp32(x[i]) * (double)y[i];
    }
    *s = (float)sum;
}

/* ---- 32-element blocks against q8_0 / q8_1 -------------------------------- */

/* Bit 4 of element j of a q5_0/q5_1 block. */
static inline int lb_q5_high_bit(const uint8_t qh[4], int j) { return (qh[j >> 3] >> (j & 7)) & 1; }

void lb_vec_dot_q4_0_q8_0(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q4_0 *x = w;
    const lb_block_q8_0 *y = a;
    const int64_t nb = n / LB_QK4_0;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < LB_QK4_0 / 2; j++) {
            const int lo = (x[b].qs[j] & 15) - 8;
            const int hi = (x[b].qs[j] >> 4) - 8;
            isum += lo * y[b].qs[j] + hi * y[b].qs[j + LB_QK4_0 / 2];
        }
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d));
    }
    *s = lb_fold4(acc);
}

/* sum_i (d q_i + m) y_i dy = d dy sum_i q_i y_i + m (dy sum_i y_i), and q8_1's s
 * already holds the bracket. */
void lb_vec_dot_q4_1_q8_1(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q4_1 *x = w;
    const lb_block_q8_1 *y = a;
    const int64_t nb = n / LB_QK4_1;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < LB_QK4_1 / 2; j++) {
            isum += (x[b].qs[j] & 15) * y[b].qs[j] + (x[b].qs[j] >> 4) * y[b].qs[j + LB_QK4_1 / 2];
        }
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d)) +
               lb_fp16_to_fp32(x[b].m) * lb_fp16_to_fp32(y[b].s);
    }
    *s = lb_fold4(acc);
}

void lb_vec_dot_q5_0_q8_0(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q5_0 *x = w;
    const lb_block_q8_0 *y = a;
    const int64_t nb = n / LB_QK5_0;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < LB_QK5_0 / 2; j++) {
            const int lo = ((x[b].qs[j] & 15) | (lb_q5_high_bit(x[b].qh, j) << 4)) - 16;
            const int hi = ((x[b].qs[j] >> 4) | (lb_q5_high_bit(x[b].qh, j + LB_QK5_0 / 2) << 4)) - 16;
            isum += lo * y[b].qs[j] + hi * y[b].qs[j + LB_QK5_0 / 2];
        }
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d));
    }
    *s = lb_fold4(acc);
}

void lb_vec_dot_q5_1_q8_1(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q5_1 *x = w;
    const lb_block_q8_1 *y = a;
    const int64_t nb = n / LB_QK5_1;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < LB_QK5_1 / 2; j++) {
            const int lo = (x[b].qs[j] & 15) | (lb_q5_high_bit(x[b].qh, j) << 4);
            const int hi = (x[b].qs[j] >> 4) | (lb_q5_high_bit(x[b].qh, j + LB_QK5_1 / 2) << 4);
            isum += lo * y[b].qs[j] + hi * y[b].qs[j + LB_QK5_1 / 2];
        }
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d)) +
               lb_fp16_to_fp32(x[b].m) * lb_fp16_to_fp32(y[b].s);
    }
    *s = lb_fold4(acc);
}

void lb_vec_dot_q8_0_q8_0(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q8_0 *x = w;
    const lb_block_q8_0 *y = a;
    const int64_t nb = n / LB_QK8_0;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < LB_QK8_0; j++) {
            isum += x[b].qs[j] * y[b].qs[j];
        }
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d));
    }
    *s = lb_fold4(acc);
}

/* Q8_0 weights against 16-bit activations: |isum| <= 32 * 127 * 32767, inside
 * int32; (float)isum rounds to nearest even, as every path's conversion does. */
void lb_vec_dot_q8_0_q16(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q8_0 *x = w;
    const lb_block_q16 *y = a;
    const int64_t nb = n / LB_QK8_0;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < LB_QK8_0; j++) {
            isum += x[b].qs[j] * y[b].qs[j];
        }
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * y[b].d);
    }
    *s = lb_fold4(acc);
}

void lb_vec_dot_iq4_nl_q8_0(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_iq4_nl *x = w;
    const lb_block_q8_0 *y = a;
    const int64_t nb = n / LB_QK4_NL;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < LB_QK4_NL / 2; j++) {
            isum += lb_kvalues_iq4nl[x[b].qs[j] & 15] * y[b].qs[j] +
                    lb_kvalues_iq4nl[x[b].qs[j] >> 4] * y[b].qs[j + LB_QK4_NL / 2];
        }
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d));
    }
    *s = lb_fold4(acc);
}

/* ---- K-quants against q8_K ------------------------------------------------
 * Each kernel first unpacks a super-block's quants into q[256] (one int8 per
 * element, in element order), then sums q*y per sub-block. */

/* Integer dot product of `len` int8 pairs. */
static inline int32_t lb_dot_i8(const int8_t *q, const int8_t *y, int len) {
    int32_t sum = 0;
    for (int i = 0; i < len; i++) {
        sum += q[i] * y[i];
    }
    return sum;
}

void lb_vec_dot_q2_K_q8_K(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q2_K *x = w;
    const lb_block_q8_K *y = a;
    const int64_t nb = n / LB_QK_K;
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8_t q[LB_QK_K];
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                for (int l = 0; l < 32; l++) {
                    q[128 * h + 32 * k + l] = (int8_t)((x[b].qs[32 * h + l] >> (2 * k)) & 3);
                }
            }
        }
        int32_t isum = 0; /* sum of scale * q * y */
        int32_t msum = 0; /* sum of min * y */
        for (int j = 0; j < LB_QK_K / 16; j++) {
            isum += (x[b].scales[j] & 15) * lb_dot_i8(q + 16 * j, y[b].qs + 16 * j, 16);
            msum += (x[b].scales[j] >> 4) * y[b].bsums[j];
        }
        const float dall = y[b].d * lb_fp16_to_fp32(x[b].d);
        const float dmin = y[b].d * lb_fp16_to_fp32(x[b].dmin);
        sum += dall * (float)isum - dmin * (float)msum;
    }
    *s = sum;
}

void lb_vec_dot_q3_K_q8_K(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q3_K *x = w;
    const lb_block_q8_K *y = a;
    const int64_t nb = n / LB_QK_K;
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8_t q[LB_QK_K];
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                for (int l = 0; l < 32; l++) {
                    const int i = 128 * h + 32 * k + l;
                    const int low = (x[b].qs[32 * h + l] >> (2 * k)) & 3;
                    /* a clear high bit means the quant is offset by -4 */
                    const int high = (x[b].hmask[i % 32] >> (i / 32)) & 1;
                    q[i] = (int8_t)(low - (high ? 0 : 4));
                }
            }
        }
        int8_t sc[16];
        lb_unpack_scales_q3_K(x[b].scales, sc);
        int32_t isum = 0;
        for (int j = 0; j < LB_QK_K / 16; j++) {
            isum += sc[j] * lb_dot_i8(q + 16 * j, y[b].qs + 16 * j, 16);
        }
        sum += (lb_fp16_to_fp32(x[b].d) * y[b].d) * (float)isum;
    }
    *s = sum;
}

void lb_vec_dot_q4_K_q8_K(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q4_K *x = w;
    const lb_block_q8_K *y = a;
    const int64_t nb = n / LB_QK_K;
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8_t q[LB_QK_K];
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                q[64 * c + l] = (int8_t)(x[b].qs[32 * c + l] & 15);
                q[64 * c + 32 + l] = (int8_t)(x[b].qs[32 * c + l] >> 4);
            }
        }
        uint8_t sc[8], mn[8];
        lb_unpack_scales_k4(x[b].scales, sc, mn);
        int32_t isum = 0;
        int32_t msum = 0;
        for (int j = 0; j < LB_QK_K / 32; j++) {
            isum += sc[j] * lb_dot_i8(q + 32 * j, y[b].qs + 32 * j, 32);
            msum += mn[j] * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        }
        const float dall = y[b].d * lb_fp16_to_fp32(x[b].d);
        const float dmin = y[b].d * lb_fp16_to_fp32(x[b].dmin);
        sum += dall * (float)isum - dmin * (float)msum;
    }
    *s = sum;
}

void lb_vec_dot_q5_K_q8_K(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q5_K *x = w;
    const lb_block_q8_K *y = a;
    const int64_t nb = n / LB_QK_K;
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8_t q[LB_QK_K];
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                const int i0 = 64 * c + l;
                const int i1 = i0 + 32;
                q[i0] = (int8_t)((x[b].qs[32 * c + l] & 15) | (((x[b].qh[l] >> (i0 / 32)) & 1) << 4));
                q[i1] = (int8_t)((x[b].qs[32 * c + l] >> 4) | (((x[b].qh[l] >> (i1 / 32)) & 1) << 4));
            }
        }
        uint8_t sc[8], mn[8];
        lb_unpack_scales_k4(x[b].scales, sc, mn);
        int32_t isum = 0;
        int32_t msum = 0;
        for (int j = 0; j < LB_QK_K / 32; j++) {
            isum += sc[j] * lb_dot_i8(q + 32 * j, y[b].qs + 32 * j, 32);
            msum += mn[j] * (y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        }
        const float dall = y[b].d * lb_fp16_to_fp32(x[b].d);
        const float dmin = y[b].d * lb_fp16_to_fp32(x[b].dmin);
        sum += dall * (float)isum - dmin * (float)msum;
    }
    *s = sum;
}

void lb_vec_dot_q6_K_q8_K(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q6_K *x = w;
    const lb_block_q8_K *y = a;
    const int64_t nb = n / LB_QK_K;
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8_t q[LB_QK_K];
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[b].ql + 64 * h;
            const uint8_t *qh = x[b].qh + 32 * h;
            for (int l = 0; l < 64; l++) {
                /* elements 128h + l and 128h + 64 + l share ql[l]; their high bits are
                 * bit pairs k and k + 2 of qh[l % 32] */
                const int k = l / 32;
                const int hi0 = (qh[l % 32] >> (2 * k)) & 3;
                const int hi1 = (qh[l % 32] >> (2 * (k + 2))) & 3;
                q[128 * h + l] = (int8_t)(((ql[l] & 15) | (hi0 << 4)) - 32);
                q[128 * h + 64 + l] = (int8_t)(((ql[l] >> 4) | (hi1 << 4)) - 32);
            }
        }
        int32_t isum = 0;
        for (int j = 0; j < LB_QK_K / 16; j++) {
            isum += x[b].scales[j] * lb_dot_i8(q + 16 * j, y[b].qs + 16 * j, 16);
        }
        sum += (lb_fp16_to_fp32(x[b].d) * y[b].d) * (float)isum;
    }
    *s = sum;
}

/* ---- attention helpers ------------------------------------------------------ */

float lb_attn_dot_ref(int64_t n, const float *q, const uint16_t *k) {
    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n; i++) {
        s[i % 8] += q[i] * lb_fp16_to_fp32(k[i]);
    }
    return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

void lb_attn_axpy_ref(int64_t n, float w, const uint16_t *v, float *o) {
    for (int64_t i = 0; i < n; i++) {
        o[i] += w * lb_fp16_to_fp32(v[i]);
    }
}

/* Constants of lb_exp_ref: ln2 split so that n * LB_LN2_HI is exact for
 * |n| <= 2^9, and the coefficients of Cephes' expf (S. L. Moshier, Cephes
 * Math Library, 1984-2000). LB_ROUND_MAGIC (1.5 * 2^23) rounds |y| < 2^22 to
 * the nearest integer by one addition and one subtraction. */
#define LB_LOG2E 1.44269504088896341f
#define LB_LN2_HI 0.693359375f
#define LB_LN2_LO -2.12194440e-4f
#define LB_ROUND_MAGIC 12582912.0f

float lb_exp_ref(float x) {
    if (!(x >= -87.0f)) {
        return x != x ? x : 0.0f;
    }
    if (x > 88.0f) {
        return INFINITY;
    }
    const float n = (x * LB_LOG2E + LB_ROUND_MAGIC) - LB_ROUND_MAGIC;
    float r = x - n * LB_LN2_HI;
    r = r - n * LB_LN2_LO;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = (p * r * r + r) + 1.0f;
    /* n is in [-126, 127] here, so 2^n is a normal float */
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

void lb_softmax_ref(int64_t n, float *x, float scale, float *stats) {
    float mx = -INFINITY;
    for (int64_t p = 0; p < n; p++) {
        x[p] *= scale;
        mx = x[p] > mx ? x[p] : mx;
    }
    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t p = 0; p < n; p++) {
        x[p] = lb_exp_ref(x[p] - mx);
        s[p % 8] += x[p];
    }
    const float sum = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
    const float inv = 1.0f / sum;
    for (int64_t p = 0; p < n; p++) {
        x[p] *= inv;
    }
    if (stats) {
        stats[0] = mx;
        stats[1] = sum;
    }
}

void lb_swiglu_ref(int64_t n, float *g, const float *u) {
    for (int64_t i = 0; i < n; i++) {
        g[i] = g[i] / (1.0f + lb_exp_ref(-g[i])) * u[i];
    }
}

void lb_attn_wsum_q8_0_ref(int64_t n, int64_t n_keys, const float *w, const void *v, size_t v_stride, float *o) {
    for (int64_t i = 0; i < n; i++) {
        o[i] = 0.0f;
    }
    for (int64_t p = 0; p < n_keys; p++) {
        const lb_block_q8_0 *x = (const lb_block_q8_0 *)((const uint8_t *)v + (size_t)p * v_stride);
        for (int64_t b = 0; b < n / LB_QK8_0; b++) {
            const float wd = w[p] * lb_fp16_to_fp32(x[b].d);
            for (int j = 0; j < LB_QK8_0; j++) {
                o[b * LB_QK8_0 + j] += wd * (float)x[b].qs[j];
            }
        }
    }
}
