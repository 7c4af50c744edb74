/* Dot-product kernels and the block-unpacking helpers that the kernels and the
 * dequantizers in quants.c share. Internal. */
#ifndef LB_KERNELS_H
#define LB_KERNELS_H

#include <stdint.h>

#include "lb_blocks.h"
#include "lb_internal.h"

/* IQ4_NL's 16 levels, indexed by the 4-bit code. */
extern const int8_t lb_kvalues_iq4nl[16];

/* Q4_K/Q5_K: 8 six-bit scales and 8 six-bit mins from the 12 packed bytes. */
static inline void lb_unpack_scales_k4(const uint8_t b[LB_K_SCALE_SIZE], uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = b[j] & 63;
        mn[j] = b[j + 4] & 63;
    }
    for (int j = 4; j < 8; j++) {
        sc[j] = (uint8_t)((b[j + 4] & 15) | ((b[j - 4] >> 6) << 4));
        mn[j] = (uint8_t)((b[j + 4] >> 4) | ((b[j] >> 6) << 4));
    }
}

/* Q3_K: 16 six-bit scales, re-centred to -32..31. */
static inline void lb_unpack_scales_q3_K(const uint8_t b[LB_K_SCALE_SIZE], int8_t sc[16]) {
    for (int j = 0; j < 16; j++) {
        const int lo = (j < 8 ? b[j] : b[j - 8] >> 4) & 15;
        const int hi = (b[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/* The 32-element block dot products add their per-block terms into four
 * partial sums, block b into sum b % 4, folded as (s0 + s2) + (s1 + s3).
 * One running sum would chain every block's add behind the previous one's
 * latency; four of them let SIMD paths keep the four in one register and add
 * four blocks at once, and every path still gives the reference's bits. */
static inline float lb_fold4(const float acc[4]) { return (acc[0] + acc[2]) + (acc[1] + acc[3]); }

/* Scalar reference kernels (generic.c): *s = dot(w, a) over n elements, n a
 * whole number of blocks. w is a row of the first type, a a row of the second
 * (the weight type's vec_dot_type). */
void lb_vec_dot_f32_f32(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_f16_f32(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_bf16_f32(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q4_0_q8_0(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q4_1_q8_1(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q5_0_q8_0(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q5_1_q8_1(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q8_0_q16(int64_t n, float *s, const void *w, const void *a);
/* Not a weight's kernel: the Q8_0 KV cache's keys against a Q8_0-encoded query. */
void lb_vec_dot_q8_0_q8_0(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_iq4_nl_q8_0(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q2_K_q8_K(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q3_K_q8_K(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q4_K_q8_K(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q5_K_q8_K(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q6_K_q8_K(int64_t n, float *s, const void *w, const void *a);

/* ---- weights repacked at load: 8 rows interleaved ---------------------------
 * A Q4_0, Q4_1, Q5_0, IQ4_NL or Q8_0 matrix whose row count is a multiple
 * of 8 may be stored as groups of 8 rows (lb_pack_x8 in repack.c): for each
 * block index b, the 8 rows' fp16 scales (then Q4_1's 8 fp16 minimums or
 * Q5_0's 8 32-bit words of high bits), then their quant bytes four at a
 * time, so that byte 4k + i of row r's block is qs[32k + 4r + i]. One 32-byte load then
 * holds four consecutive quant bytes of each of the 8 rows: one int8
 * dot-product instruction against four activation bytes broadcast to every
 * lane advances all 8 rows, and each row's sum ends in its own lane with no
 * horizontal reduction. Q8_0, whose activations are 16-bit (Q16), takes its
 * quants two at a time instead (byte 2k + i of row r is qs[16k + 2r + i]):
 * 16 bytes widened to int16 then hold two quants of each row, for an int16
 * pair product against two activation values. The layout is the same for
 * every path; the bytes per row are unchanged. */
#define LB_PACK_ROWS 8
typedef struct {
    uint16_t d[LB_PACK_ROWS];
    uint8_t qs[LB_PACK_ROWS * 16]; /* Q4_0, IQ4_NL: the source's nibble bytes */
} lb_block_x8_q4;
typedef struct {
    uint16_t d[LB_PACK_ROWS];
    uint16_t m[LB_PACK_ROWS];      /* Q4_1: each row's fp16 minimum */
    uint8_t qs[LB_PACK_ROWS * 16]; /* the source's nibble bytes */
} lb_block_x8_q41;
typedef struct {
    uint16_t d[LB_PACK_ROWS];
    uint32_t qh[LB_PACK_ROWS];     /* Q5_0: each row's high-bit word */
    uint8_t qs[LB_PACK_ROWS * 16]; /* the source's nibble bytes */
} lb_block_x8_q5;
typedef struct {
    uint16_t d[LB_PACK_ROWS];
    int8_t qs[LB_PACK_ROWS * 32];  /* Q8_0: the source's quants, two of a row at a time */
} lb_block_x8_q8;

/* A Q8_0 or Q8_1 activation block's scale (and Q8_1's s) as floats and the
 * sum of its 32 quants, worked out once per encoded row for every weight row
 * that reads it (the paths that multiply unsigned weight bytes subtract
 * their offset times the sum). */
typedef struct lb_q8_info {
    float d;
    float s;     /* Q8_1 only */
    int32_t sum;
} lb_q8_info;

/* Whether rows encoded as vt have that info (Q8_0 and Q8_1 only). */
static inline int lb_q8_has_info(int32_t vt) { return vt == LB_TYPE_Q8_0 || vt == LB_TYPE_Q8_1; }

/* info for the nb blocks of a row encoded as vt (lb_q8_has_info). */
static inline void lb_q8_block_info(int32_t vt, const void *row, int64_t nb, lb_q8_info *info) {
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *qs;
        if (vt == LB_TYPE_Q8_1) {
            const lb_block_q8_1 *y = (const lb_block_q8_1 *)row + b;
            info[b].d = lb_fp16_to_fp32(y->d);
            info[b].s = lb_fp16_to_fp32(y->s);
            qs = y->qs;
        } else {
            const lb_block_q8_0 *y = (const lb_block_q8_0 *)row + b;
            info[b].d = lb_fp16_to_fp32(y->d);
            info[b].s = 0.0f;
            qs = y->qs;
        }
        int32_t acc = 0;
        for (int i = 0; i < LB_QK8_0; i++) {
            acc += qs[i];
        }
        info[b].sum = acc;
    }
}

/* s[c * ld_s + r] = the reference vec_dot of row r (0..8 * n_groups - 1) of
 * n_groups consecutive packed groups (the first at w) with activation row c
 * (0..nc-1, nc <= LB_MULTI_MAX, at a + c * a_stride, in the type's
 * vec_dot_type: Q8_1 for Q4_1, Q16 for Q8_0, else Q8_0), bit for bit;
 * yi[c * yi_stride + b] describes activation block b of row c (Q8_0 and Q8_1
 * activations only; the Q8_0 kernels do not read it). */
typedef void (*lb_gemm_x8_fn)(int64_t n, int64_t n_groups, float *s, int64_t ld_s, const void *w, const void *a,
                              size_t a_stride, const lb_q8_info *yi, int64_t yi_stride, int nc);
void lb_gemm_x8_q4_0_ref(int64_t n, int64_t n_groups, float *s, int64_t ld_s, const void *w, const void *a,
                         size_t a_stride, const lb_q8_info *yi, int64_t yi_stride, int nc);
void lb_gemm_x8_q4_1_ref(int64_t n, int64_t n_groups, float *s, int64_t ld_s, const void *w, const void *a,
                         size_t a_stride, const lb_q8_info *yi, int64_t yi_stride, int nc);
void lb_gemm_x8_q5_0_ref(int64_t n, int64_t n_groups, float *s, int64_t ld_s, const void *w, const void *a,
                         size_t a_stride, const lb_q8_info *yi, int64_t yi_stride, int nc);
void lb_gemm_x8_iq4_nl_ref(int64_t n, int64_t n_groups, float *s, int64_t ld_s, const void *w, const void *a,
                           size_t a_stride, const lb_q8_info *yi, int64_t yi_stride, int nc);
void lb_gemm_x8_q8_0_ref(int64_t n, int64_t n_groups, float *s, int64_t ld_s, const void *w, const void *a,
                         size_t a_stride, const lb_q8_info *yi, int64_t yi_stride, int nc);

/* Whether lb_pack_x8 takes the type; the bytes of one packed group of 8 rows
 * of n elements are 8 times the row's bytes. */
int lb_pack_x8_type(int32_t type);
/* Pack rows (nrows, a multiple of 8, of n elements; src row-major in the
 * GGUF layout) into dst, which holds as many bytes as src. */
void lb_pack_x8(int32_t type, const void *src, int64_t nrows, int64_t n, void *dst);
/* The inverse for one row: row `row` of packed rows of n elements, in the
 * GGUF layout, to dst (one row's bytes). */
void lb_unpack_x8_row(int32_t type, const void *packed, int64_t n, int64_t row, void *dst);

/* ---- run-time dispatch (dispatch.c) --------------------------------------- */

/* Slots in the per-type tables: every type id of the traits table. */
#define LB_TYPE_SLOTS (LB_TYPE_Q16 + 1)

/* Most activation rows one lb_vec_dot_multi_fn call takes. */
#define LB_MULTI_MAX 4

/* s[c * ld_s] = dot(w, a_c) for c in 0..nc-1 (1 <= nc <= LB_MULTI_MAX), where
 * a_c is the row at a + c * a_stride bytes: one weight row against several
 * activation rows, so each weight block is loaded and unpacked once. Column c
 * gets exactly the value the same ISA's vec_dot gives for (w, a_c). */
typedef void (*lb_vec_dot_multi_fn)(int64_t n, float *s, int64_t ld_s, const void *w, const void *a,
                                    size_t a_stride, int nc);

/* Attention over the fp16 KV cache: dot(q, k) of n floats with n fp16
 * values, and o[i] += w * v[i]. The dot sums in 8 interleaved partial sums
 * (element i into sum i % 8), combined as ((s0+s4) + (s2+s6)) + ((s1+s5) +
 * (s3+s7)), products and sums rounded separately: an order every SIMD path
 * repeats exactly, so attention, like the matrix kernels, gives the same
 * floats on every path. */
typedef float (*lb_attn_dot_fn)(int64_t n, const float *q, const uint16_t *k);
typedef void (*lb_attn_axpy_fn)(int64_t n, float w, const uint16_t *v, float *o);
float lb_attn_dot_ref(int64_t n, const float *q, const uint16_t *k);
void lb_attn_axpy_ref(int64_t n, float w, const uint16_t *v, float *o);

/* The same for nq queries against one head's keys and values, so a path
 * converts each fp16 key and value once for all of them (the query heads that
 * share a KV head, over several tokens). Key p is at k + p * k_stride bytes.
 * Scores: s[j * s_stride + p] = attn_dot(n, q[j], key p) for p < n_keys.
 * Output: o[j][0..n) = the sum over p < n_keys[j], in order, of
 * w[j * w_stride + p] * v_p[i], starting from o = 0, each product and sum
 * rounded on its own (attn_axpy repeated). */
typedef void (*lb_attn_scores_f16_fn)(int64_t n, int nq, const float *const *q, int64_t n_keys, const void *k,
                                      size_t k_stride, float *s, size_t s_stride);
typedef void (*lb_attn_wsum_f16_fn)(int64_t n, int nq, const float *w, size_t w_stride, const int64_t *n_keys,
                                    const void *v, size_t v_stride, float *const *o);

/* exp(x) from + - * and a power of two, so that every path computes the
 * same float: x rounded to n * ln2 + r (|r| <= ln2/2, ln2 in two parts),
 * Cephes' degree-7 polynomial for exp(r) (relative error about 1 ulp) and
 * 2^n in the exponent bits. x > 88 gives +inf, x < -87 gives 0 (exp(-87) is
 * 1.6e-38), NaN stays NaN. */
float lb_exp_ref(float x);

/* In place over n floats: x = x * scale, then x = exp(x - max) / sum, with
 * lb_exp_ref, the max of the scaled values (NaNs skipped) and the sum in 8
 * interleaved partial sums combined as attn_dot's; x is multiplied by the
 * rounded 1 / sum. Every path gives the same floats. stats, unless NULL,
 * receives the max and the sum, which attention needs to join softmaxes
 * taken over separate runs of keys. */
typedef void (*lb_softmax_fn)(int64_t n, float *x, float scale, float *stats);
void lb_softmax_ref(int64_t n, float *x, float scale, float *stats);

/* SwiGLU in place: g[i] = g[i] / (1 + lb_exp_ref(-g[i])) * u[i]. */
typedef void (*lb_swiglu_fn)(int64_t n, float *g, const float *u);
void lb_swiglu_ref(int64_t n, float *g, const float *u);

/* Attention over a Q8_0 KV cache, n (a whole number of blocks) values per
 * head. Scores: s[p] = the Q8_0 vec_dot of the query q (encoded to Q8_0) with
 * key row p (at k + p * k_stride bytes), for p < n_keys: exactly
 * lb_vec_dot_q8_0_q8_0's value, whatever the path. Output: o[0..n) = the sum
 * over p < n_keys, in order, of (w[p] * d) * q[i], where q and d are the
 * quants and fp16 scale of the block of value row p (at v + p * v_stride)
 * that holds element i; each product and sum is rounded on its own, starting
 * from o = 0, so every path gives the same floats here too. */
typedef void (*lb_attn_scores_q8_0_fn)(int64_t n, int64_t n_keys, const void *q, const void *k, size_t k_stride,
                                       float *s);
typedef void (*lb_attn_wsum_q8_0_fn)(int64_t n, int64_t n_keys, const float *w, const void *v, size_t v_stride,
                                     float *o);
void lb_attn_wsum_q8_0_ref(int64_t n, int64_t n_keys, const float *w, const void *v, size_t v_stride, float *o);

/* One instruction-set path: its kernels, indexed by type id. A NULL entry
 * means the scalar reference serves that type. */
typedef struct lb_kernels {
    const char *name;                          /* "scalar", "avx2", "avx512", "neon" */
    lb_vec_dot_fn vec_dot[LB_TYPE_SLOTS];      /* by weight type */
    lb_vec_dot_multi_fn vec_dot_multi[LB_TYPE_SLOTS];
    lb_from_float_fn from_float[LB_TYPE_SLOTS]; /* activation encoders (Q8_0, Q8_1, Q8_K, Q16), byte for
                                                   byte the reference ones */
    lb_attn_dot_fn attn_dot;                   /* NULL: the reference */
    lb_attn_axpy_fn attn_axpy;
    lb_attn_scores_f16_fn attn_scores_f16;    /* NULL: attn_dot key by key */
    lb_attn_wsum_f16_fn attn_wsum_f16;        /* NULL: attn_axpy key by key */
    lb_softmax_fn softmax;                    /* NULL: the reference */
    lb_swiglu_fn swiglu;                      /* NULL: the reference */
    lb_attn_scores_q8_0_fn attn_scores_q8_0;  /* NULL: lb_vec_dot_q8_0_q8_0, key by key */
    lb_attn_wsum_q8_0_fn attn_wsum_q8_0;      /* NULL: the reference */
    lb_gemm_x8_fn gemm_x8[LB_TYPE_SLOTS];     /* packed weights; NULL: the path does not pack that type
                                                 (lb_kernel_gemm_x8 gives the reference) */
} lb_kernels;

/* The active path, chosen on first use from the CPU and LOWBIT_ISA. Never
 * NULL; the table is immutable, so a caller may keep the pointer for the
 * duration of a job even if lb_set_isa switches paths meanwhile. */
const lb_kernels *lb_kernels_active(void);

/* The kernels of the active path for a weight type, with the scalar
 * reference filled in where the path has none. multi may be NULL. */
lb_vec_dot_fn lb_kernel_vec_dot(const lb_kernels *k, int32_t type);
lb_vec_dot_multi_fn lb_kernel_vec_dot_multi(const lb_kernels *k, int32_t type);
lb_from_float_fn lb_kernel_from_float(const lb_kernels *k, int32_t type);
/* The path's softmax and SwiGLU, else the references. */
lb_softmax_fn lb_kernel_softmax(const lb_kernels *k);
lb_swiglu_fn lb_kernel_swiglu(const lb_kernels *k);
/* The packed-weight kernel for a packable type: the path's, else the
 * reference (weights packed under one path stay usable after lb_set_isa). */
lb_gemm_x8_fn lb_kernel_gemm_x8(const lb_kernels *k, int32_t type);

/* The paths built into this binary for the CPU family (each checks its own
 * CPU features before dispatch selects it). */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
extern const lb_kernels lb_kernels_avx2;
extern const lb_kernels lb_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const lb_kernels lb_kernels_neon;
#endif

#endif /* LB_KERNELS_H */
