/*
 * Tensor types: the traits table, the scalar dequantizers, the float and Q8
 * encoders, and the public type functions of lowbit.h. The encoders of the
 * other weight types are in quantize.c.
 *
 * Decoding matches the gguf Python package (gguf.quants.dequantize) bit for
 * bit: each dequantizer does the same float32 operations in the same order,
 * e.g. (d * sc) * q - (dmin * m) with every product rounded.
 *
 * Rounding of the encoders: roundf, i.e. to nearest with ties away from zero.
 * That is GGML's choice for q8_0/q8_1 and also what gguf-py's np_roundf
 * emulates (it avoids np.round, which ties to even), so lb_quantize(Q8_0)
 * writes the same bytes as gguf.quants.quantize(..., Q8_0). GGML's q8_K uses
 * ties-to-even instead; Lowbit's q8_K differs from it only on exact ties,
 * which changes nothing about accuracy and no file ever stores q8_K.
 */
#include <math.h>
#include <stdlib.h>

#include "../kernels/kernels.h"
#include "lb_blocks.h"
#include "lb_internal.h"

/* The dequantizers must round every product and sum the way the reference
 * does, so keep the compiler from fusing them into multiply-adds (GCC does so
 * even across statements at -std=gnu11 when the target has FMA). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ---- dequantizers ----------------------------------------------------------
 * n is a whole number of blocks in all of these: the public entry points check
 * it, and the forward pass only builds such rows. */

static void lb_dequantize_row_f32(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void lb_dequantize_row_f16(const void *src, float *dst, int64_t n) {
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = lb_fp16_to_fp32(x[i]);
    }
}

static void lb_dequantize_row_bf16(const void *src, float *dst, int64_t n) {
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = lb_bf16_to_fp32(x[i]);
    }
}

static void lb_dequantize_row_q4_0(const void *src, float *dst, int64_t n) {
    const lb_block_q4_0 *x = src;
    const int64_t nb = n / LB_QK4_0;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        float *y = dst + b * LB_QK4_0;
        for (int j = 0; j < LB_QK4_0 / 2; j++) {
            y[j] = d * (float)((x[b].qs[j] & 15) - 8);
            y[j + LB_QK4_0 / 2] = d * (float)((x[b].qs[j] >> 4) - 8);
        }
    }
}

static void lb_dequantize_row_q4_1(const void *src, float *dst, int64_t n) {
    const lb_block_q4_1 *x = src;
    const int64_t nb = n / LB_QK4_1;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        const float m = lb_fp16_to_fp32(x[b].m);
        float *y = dst + b * LB_QK4_1;
        for (int j = 0; j < LB_QK4_1 / 2; j++) {
            y[j] = d * (float)(x[b].qs[j] & 15) + m;
            y[j + LB_QK4_1 / 2] = d * (float)(x[b].qs[j] >> 4) + m;
        }
    }
}

/* Bit 4 of element j of a q5_0/q5_1 block. */
static inline int lb_q5_high_bit(const uint8_t qh[4], int j) { return (qh[j >> 3] >> (j & 7)) & 1; }

static void lb_dequantize_row_q5_0(const void *src, float *dst, int64_t n) {
    const lb_block_q5_0 *x = src;
    const int64_t nb = n / LB_QK5_0;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        float *y = dst + b * LB_QK5_0;
        for (int j = 0; j < LB_QK5_0 / 2; j++) {
            const int lo = (x[b].qs[j] & 15) | (lb_q5_high_bit(x[b].qh, j) << 4);
            const int hi = (x[b].qs[j] >> 4) | (lb_q5_high_bit(x[b].qh, j + LB_QK5_0 / 2) << 4);
            y[j] = d * (float)(lo - 16);
            y[j + LB_QK5_0 / 2] = d * (float)(hi - 16);
        }
    }
}

static void lb_dequantize_row_q5_1(const void *src, float *dst, int64_t n) {
    const lb_block_q5_1 *x = src;
    const int64_t nb = n / LB_QK5_1;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        const float m = lb_fp16_to_fp32(x[b].m);
        float *y = dst + b * LB_QK5_1;
        for (int j = 0; j < LB_QK5_1 / 2; j++) {
            const int lo = (x[b].qs[j] & 15) | (lb_q5_high_bit(x[b].qh, j) << 4);
            const int hi = (x[b].qs[j] >> 4) | (lb_q5_high_bit(x[b].qh, j + LB_QK5_1 / 2) << 4);
            y[j] = d * (float)lo + m;
            y[j + LB_QK5_1 / 2] = d * (float)hi + m;
        }
    }
}

static void lb_dequantize_row_q8_0(const void *src, float *dst, int64_t n) {
    const lb_block_q8_0 *x = src;
    const int64_t nb = n / LB_QK8_0;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        for (int j = 0; j < LB_QK8_0; j++) {
            dst[b * LB_QK8_0 + j] = d * (float)x[b].qs[j];
        }
    }
}

static void lb_dequantize_row_q16(const void *src, float *dst, int64_t n) {
    const lb_block_q16 *x = src;
    const int64_t nb = n / LB_QK16;
    for (int64_t b = 0; b < nb; b++) {
        for (int j = 0; j < LB_QK16; j++) {
            dst[b * LB_QK16 + j] = x[b].d * (float)x[b].qs[j];
        }
    }
}

/* The sum s is redundant for decoding. */
static void lb_dequantize_row_q8_1(const void *src, float *dst, int64_t n) {
    const lb_block_q8_1 *x = src;
    const int64_t nb = n / LB_QK8_1;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        for (int j = 0; j < LB_QK8_1; j++) {
            dst[b * LB_QK8_1 + j] = d * (float)x[b].qs[j];
        }
    }
}

static void lb_dequantize_row_iq4_nl(const void *src, float *dst, int64_t n) {
    const lb_block_iq4_nl *x = src;
    const int64_t nb = n / LB_QK4_NL;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        float *y = dst + b * LB_QK4_NL;
        for (int j = 0; j < LB_QK4_NL / 2; j++) {
            y[j] = d * (float)lb_kvalues_iq4nl[x[b].qs[j] & 15];
            y[j + LB_QK4_NL / 2] = d * (float)lb_kvalues_iq4nl[x[b].qs[j] >> 4];
        }
    }
}

static void lb_dequantize_row_q2_K(const void *src, float *dst, int64_t n) {
    const lb_block_q2_K *x = src;
    const int64_t nb = n / LB_QK_K;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        const float dmin = lb_fp16_to_fp32(x[b].dmin);
        float *y = dst + b * LB_QK_K;
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                for (int l = 0; l < 32; l++) {
                    const int i = 128 * h + 32 * k + l;
                    const uint8_t sc = x[b].scales[i / 16];
                    const float dl = d * (float)(sc & 15);
                    const float ml = dmin * (float)(sc >> 4);
                    y[i] = dl * (float)((x[b].qs[32 * h + l] >> (2 * k)) & 3) - ml;
                }
            }
        }
    }
}

static void lb_dequantize_row_q3_K(const void *src, float *dst, int64_t n) {
    const lb_block_q3_K *x = src;
    const int64_t nb = n / LB_QK_K;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        int8_t sc[16];
        lb_unpack_scales_q3_K(x[b].scales, sc);
        float *y = dst + b * LB_QK_K;
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                for (int l = 0; l < 32; l++) {
                    const int i = 128 * h + 32 * k + l;
                    const int low = (x[b].qs[32 * h + l] >> (2 * k)) & 3;
                    const int high = (x[b].hmask[i % 32] >> (i / 32)) & 1;
                    const float dl = d * (float)sc[i / 16];
                    y[i] = dl * (float)(low - (high ? 0 : 4));
                }
            }
        }
    }
}

static void lb_dequantize_row_q4_K(const void *src, float *dst, int64_t n) {
    const lb_block_q4_K *x = src;
    const int64_t nb = n / LB_QK_K;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        const float dmin = lb_fp16_to_fp32(x[b].dmin);
        uint8_t sc[8], mn[8];
        lb_unpack_scales_k4(x[b].scales, sc, mn);
        float *y = dst + b * LB_QK_K;
        for (int c = 0; c < 4; c++) {
            for (int k = 0; k < 2; k++) {
                const int j = 2 * c + k; /* sub-block of 32 */
                const float dl = d * (float)sc[j];
                const float ml = dmin * (float)mn[j];
                for (int l = 0; l < 32; l++) {
                    y[32 * j + l] = dl * (float)((x[b].qs[32 * c + l] >> (4 * k)) & 15) - ml;
                }
            }
        }
    }
}

static void lb_dequantize_row_q5_K(const void *src, float *dst, int64_t n) {
    const lb_block_q5_K *x = src;
    const int64_t nb = n / LB_QK_K;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        const float dmin = lb_fp16_to_fp32(x[b].dmin);
        uint8_t sc[8], mn[8];
        lb_unpack_scales_k4(x[b].scales, sc, mn);
        float *y = dst + b * LB_QK_K;
        for (int c = 0; c < 4; c++) {
            for (int k = 0; k < 2; k++) {
                const int j = 2 * c + k;
                const float dl = d * (float)sc[j];
                const float ml = dmin * (float)mn[j];
                for (int l = 0; l < 32; l++) {
                    const int q = ((x[b].qs[32 * c + l] >> (4 * k)) & 15) | (((x[b].qh[l] >> j) & 1) << 4);
                    y[32 * j + l] = dl * (float)q - ml;
                }
            }
        }
    }
}

static void lb_dequantize_row_q6_K(const void *src, float *dst, int64_t n) {
    const lb_block_q6_K *x = src;
    const int64_t nb = n / LB_QK_K;
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_fp16_to_fp32(x[b].d);
        float *y = dst + b * LB_QK_K;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[b].ql + 64 * h;
            const uint8_t *qh = x[b].qh + 32 * h;
            for (int i = 0; i < 128; i++) {
                /* element 128h + i: nibble i/64 of ql[i % 64], bit pair i/32 of qh[i % 32] */
                const int lo = (ql[i % 64] >> (4 * (i / 64))) & 15;
                const int hi = (qh[i % 32] >> (2 * (i / 32))) & 3;
                const float dl = d * (float)x[b].scales[(128 * h + i) / 16];
                y[128 * h + i] = dl * (float)((lo | (hi << 4)) - 32);
            }
        }
    }
}

static void lb_dequantize_row_q8_K(const void *src, float *dst, int64_t n) {
    const lb_block_q8_K *x = src;
    const int64_t nb = n / LB_QK_K;
    for (int64_t b = 0; b < nb; b++) {
        for (int j = 0; j < LB_QK_K; j++) {
            dst[b * LB_QK_K + j] = x[b].d * (float)x[b].qs[j];
        }
    }
}

/* ---- reference encoders ---------------------------------------------------- */

/* roundf, clamped to +-limit; NaN gives 0 rather than an undefined conversion.
 * Finite inputs never reach the clamp: every caller scales by limit / max|x|. */
static inline int32_t lb_round_clamp(float v, float limit) {
    const float r = roundf(v);
    if (r > limit) {
        return (int32_t)limit;
    }
    if (r < -limit) {
        return -(int32_t)limit;
    }
    if (r != r) {
        return 0;
    }
    return (int32_t)r;
}

static inline int8_t lb_round_q8(float v) { return (int8_t)lb_round_clamp(v, 127.0f); }
static inline int16_t lb_round_q16(float v) { return (int16_t)lb_round_clamp(v, 32767.0f); }

static void lb_quantize_row_f32_ref(const float *src, void *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

/* Round to nearest even; beyond 65504 gives +-inf, as IEEE and numpy do. */
static void lb_quantize_row_f16_ref(const float *src, void *dst, int64_t n) {
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++) {
        y[i] = lb_fp32_to_fp16(src[i]);
    }
}

static void lb_quantize_row_bf16_ref(const float *src, void *dst, int64_t n) {
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++) {
        y[i] = lb_fp32_to_bf16(src[i]);
    }
}

static float lb_block_absmax(const float *x, int len) {
    float amax = 0.0f;
    for (int j = 0; j < len; j++) {
        const float ax = fabsf(x[j]);
        if (ax > amax) {
            amax = ax;
        }
    }
    return amax;
}

/* d = max|x| / 127 so that the largest element maps to +-127. A block with
 * max|x| above about 8.3e6 gets an infinite fp16 d (as in GGML and gguf-py);
 * lb_quantize refuses such input, and real activations stay far below. */
void lb_quantize_row_q8_0_ref(const float *src, void *dst, int64_t n) {
    lb_block_q8_0 *y = dst;
    const int64_t nb = n / LB_QK8_0;
    for (int64_t b = 0; b < nb; b++) {
        const float *x = src + b * LB_QK8_0;
        const float d = lb_block_absmax(x, LB_QK8_0) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = lb_fp32_to_fp16(d);
        for (int j = 0; j < LB_QK8_0; j++) {
            y[b].qs[j] = lb_round_q8(x[j] * id);
        }
    }
}

/* d = max|x| / 32767 in float32. A block below 1e-30 in magnitude, whose
 * 1 / d could overflow, encodes as zeros: against any weight its products
 * would vanish anyway. */
void lb_quantize_row_q16_ref(const float *src, void *dst, int64_t n) {
    lb_block_q16 *y = dst;
    const int64_t nb = n / LB_QK16;
    for (int64_t b = 0; b < nb; b++) {
        const float *x = src + b * LB_QK16;
        const float amax = lb_block_absmax(x, LB_QK16);
        const float d = amax >= LB_Q16_TINY ? amax / 32767.0f : 0.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = d;
        for (int j = 0; j < LB_QK16; j++) {
            y[b].qs[j] = lb_round_q16(x[j] * id);
        }
    }
}

/* As q8_0, plus s = d * sum(qs) with the unrounded d. s overflows fp16 when
 * the block sums to more than 65504 in magnitude (as in GGML); lb_quantize
 * refuses such input. */
void lb_quantize_row_q8_1_ref(const float *src, void *dst, int64_t n) {
    lb_block_q8_1 *y = dst;
    const int64_t nb = n / LB_QK8_1;
    for (int64_t b = 0; b < nb; b++) {
        const float *x = src + b * LB_QK8_1;
        const float d = lb_block_absmax(x, LB_QK8_1) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < LB_QK8_1; j++) {
            y[b].qs[j] = lb_round_q8(x[j] * id);
            sum += y[b].qs[j];
        }
        y[b].d = lb_fp32_to_fp16(d);
        y[b].s = lb_fp32_to_fp16((float)sum * d);
    }
}

/* GGML's q8_K: scale by -127 / x[k], x[k] the first element of largest
 * magnitude, so x[k] encodes as exactly -127, and store d = 1 / that scale in
 * float. A block whose max|x| is below about 4e-37 overflows the scale and
 * encodes as zeros. */
void lb_quantize_row_q8_K_ref(const float *src, void *dst, int64_t n) {
    lb_block_q8_K *y = dst;
    const int64_t nb = n / LB_QK_K;
    for (int64_t b = 0; b < nb; b++) {
        const float *x = src + b * LB_QK_K;
        float amax = 0.0f;
        float vmax = 0.0f;
        for (int j = 0; j < LB_QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                vmax = x[j];
            }
        }
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        const float iscale = -127.0f / vmax;
        for (int j = 0; j < LB_QK_K; j++) {
            y[b].qs[j] = lb_round_q8(iscale * x[j]);
        }
        for (int j = 0; j < LB_QK_K / 16; j++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) {
                sum += y[b].qs[16 * j + i];
            }
            y[b].bsums[j] = (int16_t)sum;
        }
        y[b].d = 1.0f / iscale;
    }
}

/* ---- traits ------------------------------------------------------------------
 * Indexed by GGML type id; a slot without a name is a type Lowbit does not know. */

static const lb_type_traits lb_traits[LB_TYPE_Q16 + 1] = {
    [LB_TYPE_F32] = {.name = "F32", .blck_size = 1, .type_size = sizeof(float), .is_weight = 1,
                     .to_float = lb_dequantize_row_f32, .from_float = lb_quantize_row_f32_ref,
                     .vec_dot_type = LB_TYPE_F32, .vec_dot = lb_vec_dot_f32_f32},
    [LB_TYPE_F16] = {.name = "F16", .blck_size = 1, .type_size = sizeof(uint16_t), .is_weight = 1,
                     .to_float = lb_dequantize_row_f16, .from_float = lb_quantize_row_f16_ref,
                     .vec_dot_type = LB_TYPE_F32, .vec_dot = lb_vec_dot_f16_f32},
    [LB_TYPE_BF16] = {.name = "BF16", .blck_size = 1, .type_size = sizeof(uint16_t), .is_weight = 1,
                      .to_float = lb_dequantize_row_bf16, .from_float = lb_quantize_row_bf16_ref,
                      .vec_dot_type = LB_TYPE_F32, .vec_dot = lb_vec_dot_bf16_f32},
    [LB_TYPE_Q4_0] = {.name = "Q4_0", .blck_size = LB_QK4_0, .type_size = sizeof(lb_block_q4_0),
                      .is_weight = 1, .to_float = lb_dequantize_row_q4_0,
                      .from_float = lb_quantize_row_q4_0_ref, .quantize_imp = lb_quantize_row_q4_0_imp,
                      .vec_dot_type = LB_TYPE_Q8_0, .vec_dot = lb_vec_dot_q4_0_q8_0},
    [LB_TYPE_Q4_1] = {.name = "Q4_1", .blck_size = LB_QK4_1, .type_size = sizeof(lb_block_q4_1),
                      .is_weight = 1, .to_float = lb_dequantize_row_q4_1,
                      .from_float = lb_quantize_row_q4_1_ref, .quantize_imp = lb_quantize_row_q4_1_imp,
                      .vec_dot_type = LB_TYPE_Q8_1, .vec_dot = lb_vec_dot_q4_1_q8_1},
    [LB_TYPE_Q5_0] = {.name = "Q5_0", .blck_size = LB_QK5_0, .type_size = sizeof(lb_block_q5_0),
                      .is_weight = 1, .to_float = lb_dequantize_row_q5_0,
                      .from_float = lb_quantize_row_q5_0_ref, .quantize_imp = lb_quantize_row_q5_0_imp,
                      .vec_dot_type = LB_TYPE_Q8_0, .vec_dot = lb_vec_dot_q5_0_q8_0},
    [LB_TYPE_Q5_1] = {.name = "Q5_1", .blck_size = LB_QK5_1, .type_size = sizeof(lb_block_q5_1),
                      .is_weight = 1, .to_float = lb_dequantize_row_q5_1,
                      .from_float = lb_quantize_row_q5_1_ref, .quantize_imp = lb_quantize_row_q5_1_imp,
                      .vec_dot_type = LB_TYPE_Q8_1, .vec_dot = lb_vec_dot_q5_1_q8_1},
    [LB_TYPE_Q8_0] = {.name = "Q8_0", .blck_size = LB_QK8_0, .type_size = sizeof(lb_block_q8_0),
                      .is_weight = 1, .to_float = lb_dequantize_row_q8_0,
                      .from_float = lb_quantize_row_q8_0_ref, .quantize_imp = lb_quantize_row_q8_0_imp,
                      .vec_dot_type = LB_TYPE_Q16, .vec_dot = lb_vec_dot_q8_0_q16},
    [LB_TYPE_Q8_1] = {.name = "Q8_1", .blck_size = LB_QK8_1, .type_size = sizeof(lb_block_q8_1),
                      .is_weight = 0, .to_float = lb_dequantize_row_q8_1,
                      .from_float = lb_quantize_row_q8_1_ref, .vec_dot_type = LB_TYPE_Q8_1, .vec_dot = NULL},
    [LB_TYPE_Q2_K] = {.name = "Q2_K", .blck_size = LB_QK_K, .type_size = sizeof(lb_block_q2_K),
                      .is_weight = 1, .to_float = lb_dequantize_row_q2_K,
                      .from_float = lb_quantize_row_q2_K_ref, .quantize_imp = lb_quantize_row_q2_K_imp,
                      .vec_dot_type = LB_TYPE_Q8_K, .vec_dot = lb_vec_dot_q2_K_q8_K},
    [LB_TYPE_Q3_K] = {.name = "Q3_K", .blck_size = LB_QK_K, .type_size = sizeof(lb_block_q3_K),
                      .is_weight = 1, .to_float = lb_dequantize_row_q3_K,
                      .from_float = lb_quantize_row_q3_K_ref, .quantize_imp = lb_quantize_row_q3_K_imp,
                      .vec_dot_type = LB_TYPE_Q8_K, .vec_dot = lb_vec_dot_q3_K_q8_K},
    [LB_TYPE_Q4_K] = {.name = "Q4_K", .blck_size = LB_QK_K, .type_size = sizeof(lb_block_q4_K),
                      .is_weight = 1, .to_float = lb_dequantize_row_q4_K,
                      .from_float = lb_quantize_row_q4_K_ref, .quantize_imp = lb_quantize_row_q4_K_imp,
                      .vec_dot_type = LB_TYPE_Q8_K, .vec_dot = lb_vec_dot_q4_K_q8_K},
    [LB_TYPE_Q5_K] = {.name = "Q5_K", .blck_size = LB_QK_K, .type_size = sizeof(lb_block_q5_K),
                      .is_weight = 1, .to_float = lb_dequantize_row_q5_K,
                      .from_float = lb_quantize_row_q5_K_ref, .quantize_imp = lb_quantize_row_q5_K_imp,
                      .vec_dot_type = LB_TYPE_Q8_K, .vec_dot = lb_vec_dot_q5_K_q8_K},
    [LB_TYPE_Q6_K] = {.name = "Q6_K", .blck_size = LB_QK_K, .type_size = sizeof(lb_block_q6_K),
                      .is_weight = 1, .to_float = lb_dequantize_row_q6_K,
                      .from_float = lb_quantize_row_q6_K_ref, .quantize_imp = lb_quantize_row_q6_K_imp,
                      .vec_dot_type = LB_TYPE_Q8_K, .vec_dot = lb_vec_dot_q6_K_q8_K},
    [LB_TYPE_Q8_K] = {.name = "Q8_K", .blck_size = LB_QK_K, .type_size = sizeof(lb_block_q8_K),
                      .is_weight = 0, .to_float = lb_dequantize_row_q8_K,
                      .from_float = lb_quantize_row_q8_K_ref, .vec_dot_type = LB_TYPE_Q8_K, .vec_dot = NULL},
    [LB_TYPE_IQ4_NL] = {.name = "IQ4_NL", .blck_size = LB_QK4_NL, .type_size = sizeof(lb_block_iq4_nl),
                        .is_weight = 1, .to_float = lb_dequantize_row_iq4_nl,
                        .from_float = lb_quantize_row_iq4_nl_ref, .quantize_imp = lb_quantize_row_iq4_nl_imp,
                        .vec_dot_type = LB_TYPE_Q8_0, .vec_dot = lb_vec_dot_iq4_nl_q8_0},
    [LB_TYPE_Q16] = {.name = "Q16", .blck_size = LB_QK16, .type_size = sizeof(lb_block_q16), .is_weight = 0,
                     .to_float = lb_dequantize_row_q16, .from_float = lb_quantize_row_q16_ref,
                     .vec_dot_type = LB_TYPE_Q16, .vec_dot = NULL},
};

const lb_type_traits *lb_get_type_traits(int32_t type) {
    if (type < 0 || type >= (int32_t)(sizeof lb_traits / sizeof lb_traits[0]) || lb_traits[type].name == NULL) {
        return NULL;
    }
    return &lb_traits[type];
}

/* Row size of n elements, or 0 if n is not a positive whole number of blocks
 * or the size does not fit in size_t. */
static size_t lb_row_bytes_of(const lb_type_traits *t, int64_t n) {
    if (n <= 0 || n % t->blck_size != 0) {
        return 0;
    }
    const uint64_t blocks = (uint64_t)(n / t->blck_size);
    if (blocks > SIZE_MAX / t->type_size) {
        return 0;
    }
    return (size_t)blocks * t->type_size;
}

size_t lb_row_bytes(int32_t type, int64_t n) {
    const lb_type_traits *t = lb_get_type_traits(type);
    return t != NULL ? lb_row_bytes_of(t, n) : 0;
}

/* ---- argument checks shared by the public functions ---------------------- */

static lb_status lb_check_type(const char *fn, int32_t type, const lb_type_traits **out) {
    *out = lb_get_type_traits(type);
    if (*out == NULL) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: unknown tensor type id %d", fn, (int)type);
    }
    return LB_OK;
}

static lb_status lb_check_not_null(const char *fn, const void *p, const char *name) {
    if (p == NULL) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, name);
    }
    return LB_OK;
}

/* Checks n for a row of type t and gives its byte size. */
static lb_status lb_check_row(const char *fn, const lb_type_traits *t, int64_t n, size_t *bytes) {
    if (n <= 0) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: n = %lld elements, must be positive", fn, (long long)n);
    }
    if (n % t->blck_size != 0) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: n = %lld is not a multiple of the %s block size %lld", fn,
                       (long long)n, t->name, (long long)t->blck_size);
    }
    *bytes = lb_row_bytes_of(t, n);
    if (*bytes == 0 || (uint64_t)n > SIZE_MAX / sizeof(float)) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: a row of n = %lld %s elements overflows size_t", fn,
                       (long long)n, t->name);
    }
    return LB_OK;
}

static lb_status lb_check_size(const char *fn, const char *name, size_t got, size_t want, int64_t n,
                               const lb_type_traits *t) {
    if (got != want) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: %s is %zu bytes, but %lld %s elements take %zu bytes", fn,
                       name, got, (long long)n, t->name, want);
    }
    return LB_OK;
}

/* The kernels access blocks through typed pointers, so memory must be aligned
 * like the block struct. */
static size_t lb_type_align(int32_t type) {
    switch (type) {
    case LB_TYPE_F32:
        return _Alignof(float);
    case LB_TYPE_Q8_K:
        return _Alignof(lb_block_q8_K);
    case LB_TYPE_Q16:
        return _Alignof(lb_block_q16);
    default:
        return _Alignof(uint16_t); /* every other block starts with or holds fp16 fields */
    }
}

static lb_status lb_check_align(const char *fn, const void *p, size_t align, const char *name) {
    if ((uintptr_t)p % align != 0) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: %s is not aligned to %zu bytes", fn, name, align);
    }
    return LB_OK;
}

/* What the Q8 and Q16 encoders cannot hold: non-finite values, and for q8_0/q8_1 an
 * fp16 field that would overflow to inf: d = max|x|/127 beyond 65504 (max|x|
 * above about 8.3e6), or q8_1's block sum s beyond 65504. The q8_1 encoder
 * itself, run on one block, tells: its d is q8_0's. */
_Static_assert(LB_QK8_0 == LB_QK8_1, "q8_0 and q8_1 blocks must cover the same elements");
static lb_status lb_check_encodable(const char *fn, int32_t type, const float *x, int64_t n) {
    if (type != LB_TYPE_Q8_0 && type != LB_TYPE_Q8_1 && type != LB_TYPE_Q8_K && type != LB_TYPE_Q16) {
        return LB_OK;
    }
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: x[%lld] = %g is not finite and has no %s encoding", fn,
                           (long long)i, (double)x[i], lb_traits[type].name);
        }
    }
    if (type == LB_TYPE_Q8_K || type == LB_TYPE_Q16) {
        return LB_OK;
    }
    for (int64_t b = 0; b < n / LB_QK8_1; b++) {
        lb_block_q8_1 tmp;
        lb_quantize_row_q8_1_ref(x + b * LB_QK8_1, &tmp, LB_QK8_1);
        if ((tmp.d & 0x7fffu) == 0x7c00u) {
            return lb_fail(LB_ERR_INVALID_ARGUMENT,
                           "%s: block %lld has max |x| = %g, beyond the %s range (its fp16 scale "
                           "max|x|/127 would overflow 65504)",
                           fn, (long long)b, (double)lb_block_absmax(x + b * LB_QK8_1, LB_QK8_1),
                           lb_traits[type].name);
        }
        if (type == LB_TYPE_Q8_1 && (tmp.s & 0x7fffu) == 0x7c00u) {
            return lb_fail(LB_ERR_INVALID_ARGUMENT,
                           "%s: block %lld sums to more than 65504 in magnitude, beyond the Q8_1 range "
                           "(its fp16 block sum would overflow)",
                           fn, (long long)b);
        }
    }
    return LB_OK;
}

/* ---- public type functions ----------------------------------------------- */

int lb_type_is_supported(int32_t type) {
    const lb_type_traits *t = lb_get_type_traits(type);
    return t != NULL && t->is_weight && t->to_float != NULL && t->vec_dot != NULL;
}

lb_status lb_type_info(int32_t type, int64_t *block_size, size_t *type_size) {
    static const char fn[] = "lb_type_info";
    const lb_type_traits *t;
    lb_status st;
    if ((st = lb_check_type(fn, type, &t)) || (st = lb_check_not_null(fn, block_size, "block_size")) ||
        (st = lb_check_not_null(fn, type_size, "type_size"))) {
        return st;
    }
    *block_size = t->blck_size;
    *type_size = t->type_size;
    return LB_OK;
}

lb_status lb_row_size(int32_t type, int64_t n, size_t *out_bytes) {
    static const char fn[] = "lb_row_size";
    const lb_type_traits *t;
    size_t bytes = 0;
    lb_status st;
    if ((st = lb_check_type(fn, type, &t)) || (st = lb_check_not_null(fn, out_bytes, "out_bytes")) ||
        (st = lb_check_row(fn, t, n, &bytes))) {
        return st;
    }
    *out_bytes = bytes;
    return LB_OK;
}

lb_status lb_dequantize(int32_t type, const void *src, size_t src_size, float *dst, int64_t n) {
    static const char fn[] = "lb_dequantize";
    const lb_type_traits *t;
    size_t bytes = 0;
    lb_status st;
    if ((st = lb_check_type(fn, type, &t)) || (st = lb_check_not_null(fn, src, "src")) ||
        (st = lb_check_not_null(fn, dst, "dst")) || (st = lb_check_row(fn, t, n, &bytes)) ||
        (st = lb_check_size(fn, "src_size", src_size, bytes, n, t)) ||
        (st = lb_check_align(fn, src, lb_type_align(type), "src")) ||
        (st = lb_check_align(fn, dst, _Alignof(float), "dst"))) {
        return st;
    }
    if (t->to_float == NULL) {
        return lb_fail(LB_ERR_UNSUPPORTED, "%s: type %s has no decoder", fn, t->name);
    }
    t->to_float(src, dst, n);
    return LB_OK;
}

/* F32, F16, BF16 and the Q8 activation formats keep their long-standing
 * behaviour here (IEEE rounding of the float types, the Q8 range checks before
 * anything is written); the other weight types go through the row encoder. */
static int lb_is_direct_encoder(int32_t type) {
    switch (type) {
    case LB_TYPE_F32:
    case LB_TYPE_F16:
    case LB_TYPE_BF16:
    case LB_TYPE_Q8_0:
    case LB_TYPE_Q8_1:
    case LB_TYPE_Q8_K:
    case LB_TYPE_Q16:
        return 1;
    default:
        return 0;
    }
}

lb_status lb_quantize(int32_t type, const float *src, int64_t n, void *dst, size_t dst_size) {
    static const char fn[] = "lb_quantize";
    const lb_type_traits *t;
    size_t bytes = 0;
    lb_status st;
    if ((st = lb_check_type(fn, type, &t))) {
        return st;
    }
    if (t->from_float == NULL) {
        return lb_fail(LB_ERR_UNSUPPORTED, "%s: type %s has no encoder", fn, t->name);
    }
    if ((st = lb_check_not_null(fn, src, "src")) || (st = lb_check_not_null(fn, dst, "dst")) ||
        (st = lb_check_row(fn, t, n, &bytes)) || (st = lb_check_size(fn, "dst_size", dst_size, bytes, n, t)) ||
        (st = lb_check_align(fn, src, _Alignof(float), "src")) ||
        (st = lb_check_align(fn, dst, lb_type_align(type), "dst"))) {
        return st;
    }
    if (!lb_is_direct_encoder(type)) {
        return lb_encode_rows(fn, type, src, 1, n, bytes, NULL, dst, 1);
    }
    if ((st = lb_check_encodable(fn, type, src, n))) {
        return st;
    }
    /* The Q8 activation encoders of every ISA path write the reference bytes,
     * so this also serves to check them against each other. */
    lb_kernel_from_float(lb_kernels_active(), type)(src, dst, n);
    return LB_OK;
}

lb_status lb_quantize_rows(int32_t type, const float *src, int64_t nrows, int64_t n_per_row,
                           const float *importance, void *dst, size_t dst_size, int32_t n_threads) {
    static const char fn[] = "lb_quantize_rows";
    const lb_type_traits *t;
    size_t row = 0;
    lb_status st;
    if ((st = lb_check_type(fn, type, &t))) {
        return st;
    }
    if (!t->is_weight || t->from_float == NULL) {
        return lb_fail(LB_ERR_UNSUPPORTED, "%s: %s is an activation format, not a weight type (see lb_quantize)", fn,
                       t->name);
    }
    if ((st = lb_check_not_null(fn, src, "src")) || (st = lb_check_not_null(fn, dst, "dst")) ||
        (st = lb_check_row(fn, t, n_per_row, &row))) {
        return st;
    }
    if (nrows <= 0) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: nrows = %lld, must be positive", fn, (long long)nrows);
    }
    if ((uint64_t)nrows > SIZE_MAX / row || (uint64_t)nrows > SIZE_MAX / sizeof(float) / (uint64_t)n_per_row) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: %lld rows of n_per_row = %lld %s elements overflow size_t", fn,
                       (long long)nrows, (long long)n_per_row, t->name);
    }
    if (dst_size != row * (size_t)nrows) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT,
                       "%s: dst_size is %zu bytes, but %lld rows of %lld %s elements take %zu bytes", fn, dst_size,
                       (long long)nrows, (long long)n_per_row, t->name, row * (size_t)nrows);
    }
    if (n_threads < 1 || n_threads > LB_MAX_THREADS) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: n_threads = %d, must be in 1..%d", fn, (int)n_threads,
                       LB_MAX_THREADS);
    }
    if ((st = lb_check_align(fn, src, _Alignof(float), "src")) ||
        (st = lb_check_align(fn, dst, lb_type_align(type), "dst")) ||
        (importance != NULL && (st = lb_check_align(fn, importance, _Alignof(float), "importance")))) {
        return st;
    }
    for (int64_t i = 0; importance != NULL && i < n_per_row; i++) {
        if (!isfinite(importance[i]) || importance[i] < 0.0f) {
            return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: importance[%lld] = %g, must be finite and >= 0", fn,
                           (long long)i, (double)importance[i]);
        }
    }
    return lb_encode_rows(fn, type, src, nrows, n_per_row, row, importance, dst, n_threads);
}

lb_status lb_vec_dot(int32_t type, int64_t n, int64_t rows, const void *w, size_t w_size, const float *x,
                     float *out) {
    static const char fn[] = "lb_vec_dot";
    const lb_type_traits *t;
    size_t row = 0;
    lb_status st;
    if ((st = lb_check_type(fn, type, &t))) {
        return st;
    }
    if (t->vec_dot == NULL) {
        return lb_fail(LB_ERR_UNSUPPORTED, "%s: %s is an activation format, not a weight type", fn, t->name);
    }
    if ((st = lb_check_not_null(fn, w, "w")) || (st = lb_check_not_null(fn, x, "x")) ||
        (st = lb_check_not_null(fn, out, "out")) || (st = lb_check_row(fn, t, n, &row))) {
        return st;
    }
    if (rows <= 0) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: rows = %lld, must be positive", fn, (long long)rows);
    }
    if ((uint64_t)rows > SIZE_MAX / row) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: %lld rows of n = %lld %s elements overflow size_t", fn,
                       (long long)rows, (long long)n, t->name);
    }
    if (w_size != row * (size_t)rows) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT,
                       "%s: w_size is %zu bytes, but %lld rows of %lld %s elements take %zu bytes", fn, w_size,
                       (long long)rows, (long long)n, t->name, row * (size_t)rows);
    }
    if ((st = lb_check_align(fn, w, lb_type_align(type), "w")) ||
        (st = lb_check_align(fn, x, _Alignof(float), "x")) ||
        (st = lb_check_align(fn, out, _Alignof(float), "out"))) {
        return st;
    }

    const lb_type_traits *at = lb_get_type_traits(t->vec_dot_type);
    const void *act = x;
    void *scratch = NULL;
    if (t->vec_dot_type != LB_TYPE_F32) {
        const size_t act_bytes = at != NULL ? lb_row_bytes_of(at, n) : 0;
        if (act_bytes == 0 || at->from_float == NULL) {
            return lb_fail(LB_ERR_INTERNAL, "%s: %s has no usable activation format", fn, t->name);
        }
        if ((st = lb_check_encodable(fn, t->vec_dot_type, x, n))) {
            return st;
        }
        scratch = malloc(act_bytes);
        if (scratch == NULL) {
            return lb_fail(LB_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes for the encoded x", fn, act_bytes);
        }
    }
    const lb_kernels *k = lb_kernels_active();
    if (scratch != NULL) {
        lb_kernel_from_float(k, t->vec_dot_type)(x, scratch, n);
        act = scratch;
    }
    if (rows % LB_PACK_ROWS == 0 && lb_pack_x8_type(type) && k->gemm_x8[type] != NULL) {
        /* As lb_model_set_tensor would: repack the rows and use the path's
         * kernel for that layout. */
        const int64_t nb = n / LB_QK8_0;
        void *packed = malloc(w_size);
        lb_q8_info *yi = (lb_q8_info *)malloc((size_t)nb * sizeof(lb_q8_info));
        if (packed == NULL || yi == NULL) {
            free(packed);
            free(yi);
            free(scratch);
            return lb_fail(LB_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes for the repacked rows", fn, w_size);
        }
        lb_pack_x8(type, w, rows, n, packed);
        if (lb_q8_has_info(t->vec_dot_type)) {
            lb_q8_block_info(t->vec_dot_type, act, nb, yi);
        }
        k->gemm_x8[type](n, rows / LB_PACK_ROWS, out, 0, packed, act, 0, yi, 0, 1);
        free(packed);
        free(yi);
        free(scratch);
        return LB_OK;
    }
    const lb_vec_dot_fn dot = lb_kernel_vec_dot(k, type);
    for (int64_t r = 0; r < rows; r++) {
        dot(n, &out[r], (const char *)w + (size_t)r * row, act);
    }
    free(scratch);
    return LB_OK;
}

lb_status lb_softmax(int64_t n, float *x, float scale) {
    lb_clear_error();
    lb_status st;
    if ((st = lb_check_not_null("lb_softmax", x, "x"))) {
        return st;
    }
    if (n < 0) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "lb_softmax: n = %lld, must not be negative", (long long)n);
    }
    lb_kernel_softmax(lb_kernels_active())(n, x, scale, NULL);
    return LB_OK;
}

lb_status lb_swiglu(int64_t n, float *g, const float *u) {
    lb_clear_error();
    lb_status st;
    if ((st = lb_check_not_null("lb_swiglu", g, "g")) || (st = lb_check_not_null("lb_swiglu", u, "u"))) {
        return st;
    }
    if (n < 0) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "lb_swiglu: n = %lld, must not be negative", (long long)n);
    }
    lb_kernel_swiglu(lb_kernels_active())(n, g, u);
    return LB_OK;
}
