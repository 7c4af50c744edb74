/* Internal declarations shared by the library's C files. Not installed. */
#ifndef LB_INTERNAL_H
#define LB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lowbit.h"

#if defined(_MSC_VER)
#define LB_THREAD_LOCAL __declspec(thread)
#define LB_UNUSED
#else
#define LB_THREAD_LOCAL _Thread_local
#define LB_UNUSED __attribute__((unused))
#endif

/* ---- errors (api.c) ----------------------------------------------------- */

/* Record a printf-style message for lb_last_error() and return `status`. */
lb_status lb_fail(lb_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void lb_clear_error(void);

/* ---- half and bfloat16 ---------------------------------------------------- */

static inline float lb_fp32_from_bits(uint32_t w) {
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

static inline uint32_t lb_fp32_to_bits(float f) {
    uint32_t w;
    memcpy(&w, &f, sizeof w);
    return w;
}

/* IEEE half -> float, exact for every input including subnormals, inf, nan. */
static inline float lb_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: value = man * 2^-24 */
            float v = (float)man * (1.0f / 16777216.0f);
            return sign ? -v : v;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    return lb_fp32_from_bits(bits);
}

/* float -> IEEE half, round to nearest even; overflow gives inf. */
static inline uint16_t lb_fp32_to_fp16(float f) {
    const uint32_t x = lb_fp32_to_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) { /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    }
    if (ax >= 0x477ff000u) { /* rounds to >= 65536 */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or 0 */
        /* value * 2^24 rounded to nearest even gives the mantissa */
        const float v = lb_fp32_from_bits(ax) * 16777216.0f;
        const float r = v + 12582912.0f; /* 1.5 * 2^23 forces rounding at 1.0 */
        const uint32_t m = lb_fp32_to_bits(r) - 0x4b400000u;
        return (uint16_t)(sign | m);
    }
    {
        const uint32_t mant_odd = (ax >> 13) & 1u;
        const uint32_t rounded = ax + 0xfffu + mant_odd;
        return (uint16_t)(sign | (((rounded >> 13) - (112u << 10)) & 0x7fffu));
    }
}

static inline float lb_bf16_to_fp32(uint16_t h) {
    return lb_fp32_from_bits((uint32_t)h << 16);
}

/* float -> bfloat16, round to nearest even; nan stays nan. */
static inline uint16_t lb_fp32_to_bf16(float f) {
    uint32_t x = lb_fp32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((x >> 16) | 64u);
    }
    return (uint16_t)((x + (0x7fffu + ((x >> 16) & 1u))) >> 16);
}

/* ---- type traits (quants.c) ------------------------------------------------ */

/* Decode n elements (n a multiple of the block size). */
typedef void (*lb_to_float_fn)(const void *src, float *dst, int64_t n);
/* Encode n floats (n a multiple of the block size). */
typedef void (*lb_from_float_fn)(const float *src, void *dst, int64_t n);
/* Encode n floats with importance weights imp (n of them, finite, >= 0). */
typedef void (*lb_quantize_imp_fn)(const float *src, void *dst, int64_t n, const float *imp);
/* *s = dot(w, a) over n elements; w is a row of the weight type, a a row of
 * that type's vec_dot_type. */
typedef void (*lb_vec_dot_fn)(int64_t n, float *s, const void *w, const void *a);

typedef struct lb_type_traits {
    const char *name;
    int64_t blck_size;          /* elements per block */
    size_t type_size;           /* bytes per block */
    int is_weight;              /* usable as a model weight */
    lb_to_float_fn to_float;    /* NULL for activation-only types without a decoder */
    lb_from_float_fn from_float;/* reference encoder (no importance); NULL where there is none */
    lb_quantize_imp_fn quantize_imp; /* importance-weighted encoder; NULL where importance
                                        cannot change the encoding (F32, F16, BF16) */
    int32_t vec_dot_type;       /* activation format for vec_dot */
    lb_vec_dot_fn vec_dot;      /* NULL for activation-only types */
} lb_type_traits;

/* NULL for an unknown type id. */
const lb_type_traits *lb_get_type_traits(int32_t type);

/* Row size in bytes, or 0 if the type is unknown or n is not a whole number
 * of blocks. */
size_t lb_row_bytes(int32_t type, int64_t n);

/* ---- encoders (quants.c: q8_0, q8_1, q8_K, q16; quantize.c: the others) ---- */

void lb_quantize_row_q8_0_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q8_1_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q8_K_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q16_ref(const float *src, void *dst, int64_t n);
/* Q16 encodes a block whose max |x| is below this as zeros. */
#define LB_Q16_TINY 1e-30f
void lb_quantize_row_q4_0_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q4_1_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q5_0_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q5_1_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_iq4_nl_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q2_K_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q3_K_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q4_K_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q5_K_ref(const float *src, void *dst, int64_t n);
void lb_quantize_row_q6_K_ref(const float *src, void *dst, int64_t n);

void lb_quantize_row_q8_0_imp(const float *src, void *dst, int64_t n, const float *imp);
void lb_quantize_row_q4_0_imp(const float *src, void *dst, int64_t n, const float *imp);
void lb_quantize_row_q4_1_imp(const float *src, void *dst, int64_t n, const float *imp);
void lb_quantize_row_q5_0_imp(const float *src, void *dst, int64_t n, const float *imp);
void lb_quantize_row_q5_1_imp(const float *src, void *dst, int64_t n, const float *imp);
void lb_quantize_row_iq4_nl_imp(const float *src, void *dst, int64_t n, const float *imp);
void lb_quantize_row_q2_K_imp(const float *src, void *dst, int64_t n, const float *imp);
void lb_quantize_row_q3_K_imp(const float *src, void *dst, int64_t n, const float *imp);
void lb_quantize_row_q4_K_imp(const float *src, void *dst, int64_t n, const float *imp);
void lb_quantize_row_q5_K_imp(const float *src, void *dst, int64_t n, const float *imp);
void lb_quantize_row_q6_K_imp(const float *src, void *dst, int64_t n, const float *imp);

/* Most threads lb_quantize_rows accepts. */
#define LB_MAX_THREADS 1024

/* Encode nrows rows of n floats (n a whole number of blocks, row_bytes the
 * encoded size of a row, all already checked by the caller) on n_threads
 * threads, with importance imp (NULL or n checked weights). Refuses rows with
 * non-finite values and encodings whose fp16 fields would be infinite; fn
 * names the public function in messages. dst is unspecified on failure. */
lb_status lb_encode_rows(const char *fn, int32_t type, const float *src, int64_t nrows, int64_t n,
                         size_t row_bytes, const float *imp, void *dst, int n_threads);

#endif /* LB_INTERNAL_H */
