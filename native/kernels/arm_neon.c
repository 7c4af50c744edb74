/*
 * The arm64 path: NEON with the dot-product extension (SDOT), i.e. ARMv8.2-A
 * and later (Apple M1+, Cortex-A76+, Neoverse N1+, Graviton 2+). Compiled for
 * that target whatever the build flags say; dispatch.c selects it only where
 * the kernel reports the feature (HWCAP_ASIMDDP).
 *
 * As on x86 (see x86_simd.h), the quantized kernels reproduce the scalar
 * reference bit for bit: SDOT sums each block's products exactly, and the
 * float steps after it are the reference's, block after block, with no fused
 * multiply-adds. The K-quants unpack a super-block into int8 quants as the
 * reference does and then take SDOT sums per sub-block.
 */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("dotprod"))), apply_to = function)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels.h"

/* ---- helpers ------------------------------------------------------------------ */

static inline int32_t lb_dot32_s8(int8x16_t q0, int8x16_t q1, const int8_t *y) {
    const int32x4_t acc = vdotq_s32(vdotq_s32(vdupq_n_s32(0), q0, vld1q_s8(y)), q1, vld1q_s8(y + 16));
    return vaddvq_s32(acc);
}

static inline int32_t lb_dot_i8(const int8_t *q, const int8_t *y, int len) {
    int32x4_t acc = vdupq_n_s32(0);
    for (int i = 0; i < len; i += 16) {
        acc = vdotq_s32(acc, vld1q_s8(q + i), vld1q_s8(y + i));
    }
    return vaddvq_s32(acc);
}

/* 0xff in byte i where bit (first + i) of the little-endian qh is set, i < 16. */
static inline uint8x16_t lb_bits16(const uint8_t qh[4], int first) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t rep = vcombine_u8(vdup_n_u8(qh[first / 8]), vdup_n_u8(qh[first / 8 + 1]));
    return vtstq_u8(rep, vld1q_u8(bit));
}

/* ---- 32-element blocks ------------------------------------------------------------ */

static void lb_neon_q4_0(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q4_0 *x = w;
    const lb_block_q8_0 *y = a;
    const uint8x16_t m4 = vdupq_n_u8(15);
    const int8x16_t eight = vdupq_n_s8(8);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < n / LB_QK4_0; b++) {
        const uint8x16_t raw = vld1q_u8(x[b].qs);
        const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(raw, m4)), eight);
        const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)), eight);
        const int32_t isum = lb_dot32_s8(lo, hi, y[b].qs);
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d));
    }
    *s = lb_fold4(acc);
}

static void lb_neon_q4_1(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q4_1 *x = w;
    const lb_block_q8_1 *y = a;
    const uint8x16_t m4 = vdupq_n_u8(15);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < n / LB_QK4_1; b++) {
        const uint8x16_t raw = vld1q_u8(x[b].qs);
        const int32_t isum = lb_dot32_s8(vreinterpretq_s8_u8(vandq_u8(raw, m4)),
                                         vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)), y[b].qs);
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d)) +
               lb_fp16_to_fp32(x[b].m) * lb_fp16_to_fp32(y[b].s);
    }
    *s = lb_fold4(acc);
}

static void lb_neon_q5_0(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q5_0 *x = w;
    const lb_block_q8_0 *y = a;
    const uint8x16_t m4 = vdupq_n_u8(15), f0 = vdupq_n_u8(0xf0);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < n / LB_QK5_0; b++) {
        const uint8x16_t raw = vld1q_u8(x[b].qs);
        /* q - 16: the nibble where bit 4 is set, else the nibble with 0xf0 on top */
        const uint8x16_t lo = vorrq_u8(vandq_u8(raw, m4), vbicq_u8(f0, lb_bits16(x[b].qh, 0)));
        const uint8x16_t hi = vorrq_u8(vshrq_n_u8(raw, 4), vbicq_u8(f0, lb_bits16(x[b].qh, 16)));
        const int32_t isum = lb_dot32_s8(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), y[b].qs);
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d));
    }
    *s = lb_fold4(acc);
}

static void lb_neon_q5_1(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q5_1 *x = w;
    const lb_block_q8_1 *y = a;
    const uint8x16_t m4 = vdupq_n_u8(15), b4 = vdupq_n_u8(16);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < n / LB_QK5_1; b++) {
        const uint8x16_t raw = vld1q_u8(x[b].qs);
        const uint8x16_t lo = vorrq_u8(vandq_u8(raw, m4), vandq_u8(b4, lb_bits16(x[b].qh, 0)));
        const uint8x16_t hi = vorrq_u8(vshrq_n_u8(raw, 4), vandq_u8(b4, lb_bits16(x[b].qh, 16)));
        const int32_t isum = lb_dot32_s8(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), y[b].qs);
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d)) +
               lb_fp16_to_fp32(x[b].m) * lb_fp16_to_fp32(y[b].s);
    }
    *s = lb_fold4(acc);
}

/* Q8_0 weights against Q16 activations: the quants widened to int16, then
 * int16 multiply-longs (each lane sums 8 products, far inside int32). */
static void lb_neon_q8_0(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q8_0 *x = w;
    const lb_block_q16 *y = a;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < n / LB_QK8_0; b++) {
        int32x4_t p = vdupq_n_s32(0);
        for (int i = 0; i < LB_QK8_0; i += 16) {
            const int8x16_t q = vld1q_s8(x[b].qs + i);
            const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_high_s8(q);
            const int16x8_t y0 = vld1q_s16(y[b].qs + i), y1 = vld1q_s16(y[b].qs + i + 8);
            p = vmlal_s16(p, vget_low_s16(lo), vget_low_s16(y0));
            p = vmlal_high_s16(p, lo, y0);
            p = vmlal_s16(p, vget_low_s16(hi), vget_low_s16(y1));
            p = vmlal_high_s16(p, hi, y1);
        }
        acc[b & 3] += (float)vaddvq_s32(p) * (lb_fp16_to_fp32(x[b].d) * y[b].d);
    }
    *s = lb_fold4(acc);
}

/* A Q8_0 KV cache's scores: lb_vec_dot_q8_0_q8_0 of the encoded query with
 * each key, through SDOT. */
static void lb_neon_attn_scores_q8_0(int64_t n, int64_t n_keys, const void *q, const void *k, size_t k_stride,
                                     float *s) {
    const lb_block_q8_0 *y = q;
    for (int64_t p = 0; p < n_keys; p++) {
        const lb_block_q8_0 *x = (const lb_block_q8_0 *)((const uint8_t *)k + (size_t)p * k_stride);
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t b = 0; b < n / LB_QK8_0; b++) {
            const int32_t isum = lb_dot32_s8(vld1q_s8(x[b].qs), vld1q_s8(x[b].qs + 16), y[b].qs);
            acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d));
        }
        s[p] = lb_fold4(acc);
    }
}

static void lb_neon_iq4_nl(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_iq4_nl *x = w;
    const lb_block_q8_0 *y = a;
    const int8x16_t table = vld1q_s8(lb_kvalues_iq4nl);
    const uint8x16_t m4 = vdupq_n_u8(15);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < n / LB_QK4_NL; b++) {
        const uint8x16_t raw = vld1q_u8(x[b].qs);
        const int32_t isum =
            lb_dot32_s8(vqtbl1q_s8(table, vandq_u8(raw, m4)), vqtbl1q_s8(table, vshrq_n_u8(raw, 4)), y[b].qs);
        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x[b].d) * lb_fp16_to_fp32(y[b].d));
    }
    *s = lb_fold4(acc);
}

/* ---- K-quants: unpack as the reference, then SDOT per sub-block ---------------- */

/* Writes q[32 * k + l] = (src[l] >> 2k) & 3 for k < 4, l < 32. */
static inline void lb_unpack_2bit(const uint8_t *src, int8_t *q) {
    const uint8x16_t m3 = vdupq_n_u8(3);
    for (int half = 0; half < 2; half++) {
        const uint8x16_t v = vld1q_u8(src + 16 * half);
        vst1q_s8(q + 16 * half, vreinterpretq_s8_u8(vandq_u8(v, m3)));
        vst1q_s8(q + 32 + 16 * half, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 2), m3)));
        vst1q_s8(q + 64 + 16 * half, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 4), m3)));
        vst1q_s8(q + 96 + 16 * half, vreinterpretq_s8_u8(vshrq_n_u8(v, 6)));
    }
}

static void lb_neon_q2_K(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q2_K *x = w;
    const lb_block_q8_K *y = a;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / LB_QK_K; b++) {
        int8_t q[LB_QK_K];
        lb_unpack_2bit(x[b].qs, q);
        lb_unpack_2bit(x[b].qs + 32, q + 128);
        int32_t isum = 0, msum = 0;
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

static void lb_neon_q3_K(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q3_K *x = w;
    const lb_block_q8_K *y = a;
    const uint8x16_t one = vdupq_n_u8(1);
    const int8x16_t four = vdupq_n_s8(4);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / LB_QK_K; b++) {
        int8_t q[LB_QK_K];
        lb_unpack_2bit(x[b].qs, q);
        lb_unpack_2bit(x[b].qs + 32, q + 128);
        /* element 32k + l loses 4 unless bit k of hmask[l] is set */
        const uint8x16_t hm0 = vld1q_u8(x[b].hmask), hm1 = vld1q_u8(x[b].hmask + 16);
        for (int k = 0; k < 8; k++) {
            const int8x16_t shift = vdupq_n_s8((int8_t)-k);
            const uint8x16_t h0 = vandq_u8(vshlq_u8(hm0, shift), one), h1 = vandq_u8(vshlq_u8(hm1, shift), one);
            int8x16_t v0 = vld1q_s8(q + 32 * k), v1 = vld1q_s8(q + 32 * k + 16);
            v0 = vsubq_s8(v0, vmulq_s8(four, vreinterpretq_s8_u8(veorq_u8(h0, one))));
            v1 = vsubq_s8(v1, vmulq_s8(four, vreinterpretq_s8_u8(veorq_u8(h1, one))));
            vst1q_s8(q + 32 * k, v0);
            vst1q_s8(q + 32 * k + 16, v1);
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

/* q4_K and q5_K (qh non-NULL): 8 sub-blocks of 32, scales and mins. */
static float lb_neon_q45_K_block(const uint8_t *scales, const uint8_t *qh, const uint8_t *qs, uint16_t d,
                                 uint16_t dmin, const lb_block_q8_K *y) {
    const uint8x16_t m4 = vdupq_n_u8(15), one = vdupq_n_u8(1);
    uint8_t sc[8], mn[8];
    lb_unpack_scales_k4(scales, sc, mn);
    int32_t isum = 0, msum = 0;
    for (int c = 0; c < 4; c++) {
        for (int half = 0; half < 2; half++) {
            const uint8x16_t raw = vld1q_u8(qs + 32 * c + 16 * half);
            uint8x16_t lo = vandq_u8(raw, m4), hi = vshrq_n_u8(raw, 4);
            if (qh != NULL) {
                const uint8x16_t h = vld1q_u8(qh + 16 * half);
                lo = vorrq_u8(lo, vshlq_n_u8(vandq_u8(vshlq_u8(h, vdupq_n_s8((int8_t)(-2 * c))), one), 4));
                hi = vorrq_u8(hi, vshlq_n_u8(vandq_u8(vshlq_u8(h, vdupq_n_s8((int8_t)(-2 * c - 1))), one), 4));
            }
            const int8_t *y0 = y->qs + 64 * c + 16 * half;
            isum += sc[2 * c] * vaddvq_s32(vdotq_s32(vdupq_n_s32(0), vreinterpretq_s8_u8(lo), vld1q_s8(y0)));
            isum += sc[2 * c + 1] *
                    vaddvq_s32(vdotq_s32(vdupq_n_s32(0), vreinterpretq_s8_u8(hi), vld1q_s8(y0 + 32)));
        }
    }
    for (int j = 0; j < 8; j++) {
        msum += mn[j] * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
    const float dall = y->d * lb_fp16_to_fp32(d);
    const float dm = y->d * lb_fp16_to_fp32(dmin);
    return dall * (float)isum - dm * (float)msum;
}

static void lb_neon_q4_K(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q4_K *x = w;
    const lb_block_q8_K *y = a;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / LB_QK_K; b++) {
        sum += lb_neon_q45_K_block(x[b].scales, NULL, x[b].qs, x[b].d, x[b].dmin, &y[b]);
    }
    *s = sum;
}

static void lb_neon_q5_K(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q5_K *x = w;
    const lb_block_q8_K *y = a;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / LB_QK_K; b++) {
        sum += lb_neon_q45_K_block(x[b].scales, x[b].qh, x[b].qs, x[b].d, x[b].dmin, &y[b]);
    }
    *s = sum;
}

static void lb_neon_q6_K(int64_t n, float *s, const void *w, const void *a) {
    const lb_block_q6_K *x = w;
    const lb_block_q8_K *y = a;
    const uint8x16_t m4 = vdupq_n_u8(15), m3 = vdupq_n_u8(3);
    const int8x16_t m32 = vdupq_n_s8(32);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / LB_QK_K; b++) {
        int8_t q[LB_QK_K];
        for (int h = 0; h < 2; h++) {
            for (int part = 0; part < 4; part++) { /* l in 16 * part .. 16 * part + 15 */
                const int l0 = 16 * part;
                const uint8x16_t ql = vld1q_u8(x[b].ql + 64 * h + l0);
                const uint8x16_t qh = vld1q_u8(x[b].qh + 32 * h + l0 % 32);
                const int k = l0 / 32;
                const uint8x16_t hi0 = vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(-2 * k))), m3);
                const uint8x16_t hi1 = vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(-2 * (k + 2)))), m3);
                const uint8x16_t v0 = vorrq_u8(vandq_u8(ql, m4), vshlq_n_u8(hi0, 4));
                const uint8x16_t v1 = vorrq_u8(vshrq_n_u8(ql, 4), vshlq_n_u8(hi1, 4));
                vst1q_s8(q + 128 * h + l0, vsubq_s8(vreinterpretq_s8_u8(v0), m32));
                vst1q_s8(q + 128 * h + 64 + l0, vsubq_s8(vreinterpretq_s8_u8(v1), m32));
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

/* ---- float weights (float sums in SIMD order, as on x86) ------------------------ */

static inline float32x4_t lb_load4f(int32_t type, const void *w, int64_t i) {
    if (type == LB_TYPE_F16) {
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)w + i)));
    }
    if (type == LB_TYPE_BF16) {
        return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)w + i), 16));
    }
    return vld1q_f32((const float *)w + i);
}

static inline float lb_load1f(int32_t type, const void *w, int64_t i) {
    if (type == LB_TYPE_F16) {
        return lb_fp16_to_fp32(((const uint16_t *)w)[i]);
    }
    if (type == LB_TYPE_BF16) {
        return lb_bf16_to_fp32(((const uint16_t *)w)[i]);
    }
    return ((const float *)w)[i];
}

static inline float lb_neon_dot_float(int32_t type, int64_t n, const void *w, const float *y) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, lb_load4f(type, w, i), vld1q_f32(y + i));
        acc1 = vfmaq_f32(acc1, lb_load4f(type, w, i + 4), vld1q_f32(y + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) {
        sum += lb_load1f(type, w, i) * y[i];
    }
    return sum;
}

static void lb_neon_f32(int64_t n, float *s, const void *w, const void *a) {
    *s = lb_neon_dot_float(LB_TYPE_F32, n, w, a);
}
static void lb_neon_f16(int64_t n, float *s, const void *w, const void *a) {
    *s = lb_neon_dot_float(LB_TYPE_F16, n, w, a);
}
static void lb_neon_bf16(int64_t n, float *s, const void *w, const void *a) {
    *s = lb_neon_dot_float(LB_TYPE_BF16, n, w, a);
}

/* ---- activation encoders: the reference bytes ------------------------------------
 * vrndaq_f32 is roundf (ties away from zero); vmaxnmq_f32 skips a NaN as the
 * scalar max loop does; a NaN quant becomes 0 through FCVTZS, as in the
 * reference. */

static inline float lb_neon_absmax(const float *x, int len) {
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int i = 0; i < len; i += 4) {
        m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    }
    return vmaxnmvq_f32(m);
}

/* 16 quants of x * id, stored; returns their sum. */
static inline int32_t lb_neon_quant16(const float *x, float id, int8_t *dst) {
    int32x4_t v[4];
    for (int i = 0; i < 4; i++) {
        float32x4_t r = vrndaq_f32(vmulq_n_f32(vld1q_f32(x + 4 * i), id));
        r = vminq_f32(vmaxq_f32(r, vdupq_n_f32(-127.0f)), vdupq_n_f32(127.0f));
        v[i] = vcvtq_s32_f32(r);
    }
    const int16x8_t h0 = vcombine_s16(vmovn_s32(v[0]), vmovn_s32(v[1]));
    const int16x8_t h1 = vcombine_s16(vmovn_s32(v[2]), vmovn_s32(v[3]));
    const int8x16_t q = vcombine_s8(vmovn_s16(h0), vmovn_s16(h1));
    vst1q_s8(dst, q);
    return vaddlvq_s8(q);
}

/* Q16: as lb_quantize_row_q16_ref, four quants at a time. */
static void lb_neon_quantize_q16(const float *src, void *dst, int64_t n) {
    lb_block_q16 *y = dst;
    for (int64_t b = 0; b < n / LB_QK16; b++) {
        const float *x = src + b * LB_QK16;
        const float amax = lb_neon_absmax(x, LB_QK16);
        const float d = amax >= LB_Q16_TINY ? amax / 32767.0f : 0.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = d;
        for (int i = 0; i < LB_QK16; i += 4) {
            float32x4_t r = vrndaq_f32(vmulq_n_f32(vld1q_f32(x + i), id));
            r = vminq_f32(vmaxq_f32(r, vdupq_n_f32(-32767.0f)), vdupq_n_f32(32767.0f));
            vst1_s16(y[b].qs + i, vmovn_s32(vcvtq_s32_f32(r)));
        }
    }
}

static void lb_neon_quantize_q8_0(const float *src, void *dst, int64_t n) {
    lb_block_q8_0 *y = dst;
    for (int64_t b = 0; b < n / LB_QK8_0; b++) {
        const float *x = src + b * LB_QK8_0;
        const float d = lb_neon_absmax(x, LB_QK8_0) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = lb_fp32_to_fp16(d);
        lb_neon_quant16(x, id, y[b].qs);
        lb_neon_quant16(x + 16, id, y[b].qs + 16);
    }
}

static void lb_neon_quantize_q8_1(const float *src, void *dst, int64_t n) {
    lb_block_q8_1 *y = dst;
    for (int64_t b = 0; b < n / LB_QK8_1; b++) {
        const float *x = src + b * LB_QK8_1;
        const float d = lb_neon_absmax(x, LB_QK8_1) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const int32_t sum = lb_neon_quant16(x, id, y[b].qs) + lb_neon_quant16(x + 16, id, y[b].qs + 16);
        y[b].d = lb_fp32_to_fp16(d);
        y[b].s = lb_fp32_to_fp16((float)sum * d);
    }
}

static void lb_neon_quantize_q8_K(const float *src, void *dst, int64_t n) {
    lb_block_q8_K *y = dst;
    for (int64_t b = 0; b < n / LB_QK_K; b++) {
        const float *x = src + b * LB_QK_K;
        const float amax = lb_neon_absmax(x, LB_QK_K);
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        float vmax = 0.0f; /* the first element of largest magnitude, as the reference */
        for (int j = 0; j < LB_QK_K; j++) {
            if (fabsf(x[j]) == amax) {
                vmax = x[j];
                break;
            }
        }
        const float iscale = -127.0f / vmax;
        for (int j = 0; j < LB_QK_K / 16; j++) {
            y[b].bsums[j] = (int16_t)lb_neon_quant16(x + 16 * j, iscale, y[b].qs + 16 * j);
        }
        y[b].d = 1.0f / iscale;
    }
}

/* ---- attention helpers (see kernels.h for the summation order) ------------------- */

static float lb_neon_attn_dot(int64_t n, const float *q, const uint16_t *k) {
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f); /* partial sums 0-3 and 4-7 */
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vaddq_f32(s0, vmulq_f32(vld1q_f32(q + i), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(k + i)))));
        s1 = vaddq_f32(s1, vmulq_f32(vld1q_f32(q + i + 4), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(k + i + 4)))));
    }
    float part[8];
    vst1q_f32(part, s0);
    vst1q_f32(part + 4, s1);
    for (; i < n; i++) {
        part[i % 8] += q[i] * lb_fp16_to_fp32(k[i]);
    }
    return ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]));
}

static void lb_neon_attn_axpy(int64_t n, float w, const uint16_t *v, float *o) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t vv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(v + i)));
        vst1q_f32(o + i, vaddq_f32(vld1q_f32(o + i), vmulq_n_f32(vv, w)));
    }
    for (; i < n; i++) {
        o[i] += w * lb_fp16_to_fp32(v[i]);
    }
}

const lb_kernels lb_kernels_neon = {
    .name = "neon",
    .vec_dot = {[LB_TYPE_F32] = lb_neon_f32, [LB_TYPE_F16] = lb_neon_f16, [LB_TYPE_BF16] = lb_neon_bf16,
                [LB_TYPE_Q4_0] = lb_neon_q4_0, [LB_TYPE_Q4_1] = lb_neon_q4_1, [LB_TYPE_Q5_0] = lb_neon_q5_0,
                [LB_TYPE_Q5_1] = lb_neon_q5_1, [LB_TYPE_Q8_0] = lb_neon_q8_0, [LB_TYPE_IQ4_NL] = lb_neon_iq4_nl,
                [LB_TYPE_Q2_K] = lb_neon_q2_K, [LB_TYPE_Q3_K] = lb_neon_q3_K, [LB_TYPE_Q4_K] = lb_neon_q4_K,
                [LB_TYPE_Q5_K] = lb_neon_q5_K, [LB_TYPE_Q6_K] = lb_neon_q6_K},
    .from_float = {[LB_TYPE_Q8_0] = lb_neon_quantize_q8_0, [LB_TYPE_Q8_1] = lb_neon_quantize_q8_1,
                   [LB_TYPE_Q8_K] = lb_neon_quantize_q8_K, [LB_TYPE_Q16] = lb_neon_quantize_q16},
    .attn_dot = lb_neon_attn_dot,
    .attn_axpy = lb_neon_attn_axpy,
    .attn_scores_q8_0 = lb_neon_attn_scores_q8_0,
};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#else
typedef int lb_arm_neon_unused; /* ISO C wants something in every file */
#endif
