/* Dot-product kernels and the block-unpacking helpers that the kernels and the
 * dequantizers in quants.c share. Internal. */
#ifndef LB_KERNELS_H
#define LB_KERNELS_H

#include <stdint.h>

#include "lb_blocks.h"

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
void lb_vec_dot_q8_0_q8_0(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_iq4_nl_q8_0(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q2_K_q8_K(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q3_K_q8_K(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q4_K_q8_K(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q5_K_q8_K(int64_t n, float *s, const void *w, const void *a);
void lb_vec_dot_q6_K_q8_K(int64_t n, float *s, const void *w, const void *a);

#endif /* LB_KERNELS_H */
