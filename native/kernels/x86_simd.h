/*
 * The x86 kernels, written once over 256-bit vectors and compiled twice: by
 * x86_avx2.c for AVX2 + FMA + F16C, and by x86_avx512.c for AVX-512 VL with
 * VNNI, which defines LB_X86_VNNI to 1 first so the int8 products become
 * vpdpbusd/vpdpwssd. Everything here is static: each including file gets its
 * own copy, built for its own target, and exports only its kernel table.
 * Include only after the file has switched its target on.
 *
 * Every kernel takes nc activation rows (1..LB_MULTI_MAX) against one weight
 * row; the per-column arithmetic does not depend on nc.
 *
 * The quantized kernels give the scalar reference's result bit for bit: the
 * integer sum of each block (or super-block) is exact as there (no int16
 * saturation is reachable: the largest pair of u8 x s8 products is
 * 2 * 128 * 127; Q8_0's int8 x int16 pairs go straight to int32), and the
 * float work after it is the reference's, operation for operation and block
 * after block. The forward pass then computes the same logits on every path,
 * which matters more than it seems: activations are re-quantized (to 8 bits,
 * 16 for Q8_0 weights) before each matrix, so a last-bit difference can move
 * a value across a rounding boundary and grow from layer to layer.
 * That rules out fused multiply-adds in those float steps, hence
 * contraction off below. The float-weight kernels (F32, F16, BF16) have no
 * such re-quantization and sum in float with FMA, in SIMD order.
 */
#ifndef LB_X86_SIMD_H
#define LB_X86_SIMD_H

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

#ifndef LB_X86_VNNI
#define LB_X86_VNNI 0
#endif

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#if defined(_MSC_VER) && !defined(__clang__)
#define LB_INLINE static __forceinline
#define LB_UNROLL
#else
#define LB_INLINE static inline __attribute__((always_inline))
#define LB_UNROLL _Pragma("GCC unroll 4")
#endif

/* ---- primitives -------------------------------------------------------------- */

LB_INLINE float lb_h2f(uint16_t h) { return _cvtsh_ss(h); }

LB_INLINE float lb_hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

LB_INLINE int32_t lb_hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* 8 int32 lanes, each the sum of 4 adjacent products u[i] * s[i], u unsigned. */
LB_INLINE __m256i lb_mul_u8s8(__m256i u, __m256i s) {
#if LB_X86_VNNI
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* As lb_mul_u8s8 for two signed operands: |x| * (y with x's sign). */
LB_INLINE __m256i lb_mul_s8s8(__m256i x, __m256i y) {
    return lb_mul_u8s8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* acc + pairwise sums of p16 * sc16 (int16 -> int32). */
LB_INLINE __m256i lb_madd_acc(__m256i acc, __m256i p16, __m256i sc16) {
#if LB_X86_VNNI
    return _mm256_dpwssd_epi32(acc, p16, sc16);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, sc16));
#endif
}

LB_INLINE __m256i lb_loadu256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* A shuffle control that copies int16 lane lo of each 128-bit half into the
 * whole low half and lane hi into the whole high half. Shuffling a block's
 * scales (8 int16 values, the same in both halves) with it gives the int16
 * scales a madd applies to the products of a 32-byte chunk's two halves, in
 * one instruction instead of two broadcasts from general registers. */
LB_INLINE __m256i lb_lane16_sel(int lo, int hi) {
    return _mm256_set_m128i(_mm_set1_epi16((short)(0x0202 * hi + 0x0100)),
                            _mm_set1_epi16((short)(0x0202 * lo + 0x0100)));
}

/* For 16 int16 scales taken two by two: the shuffle controls of the pairs
 * (2k, 2k + 1) of a group of 8, and the two groups, each in both halves. */
LB_INLINE void lb_pair_sels(__m256i sel[4]) {
    for (int k = 0; k < 4; k++) {
        sel[k] = lb_lane16_sel(2 * k, 2 * k + 1);
    }
}
LB_INLINE void lb_scale_groups(__m256i sc16, __m256i group[2]) {
    group[0] = _mm256_permute2x128_si256(sc16, sc16, 0x00);
    group[1] = _mm256_permute2x128_si256(sc16, sc16, 0x11);
}

/* ---- 32-element blocks ------------------------------------------------------------ */

/* 16 bytes of nibbles -> 32 bytes: low nibbles first, then the high ones
 * (the element order of q4_0/q4_1/q5_x/iq4_nl blocks). */
LB_INLINE __m256i lb_nibbles32(const uint8_t *qs) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(15));
}

/* Byte i = 0xff where bit i of the little-endian 32-bit word at qh is set. */
LB_INLINE __m256i lb_bits32(const uint8_t *qh) {
    uint32_t v;
    memcpy(&v, qh, sizeof v);
    const __m256i rep = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v),
                                            _mm256_setr_epi64x(0, 0x0101010101010101LL, 0x0202020202020202LL,
                                                               0x0303030303030303LL));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(rep, bit), bit);
}

/* Block b of a row of `type` as 32 int8 in element order (unsigned 0..31
 * for q4_1/q5_1, signed otherwise), and the fp16 bits of its scale d and
 * minimum m. */
LB_INLINE __m256i lb_unpack32(const int type, const void *w, int64_t b, uint16_t *d, uint16_t *m) {
    switch (type) {
    case LB_TYPE_Q4_0: {
        const lb_block_q4_0 *x = (const lb_block_q4_0 *)w + b;
        *d = x->d;
        return _mm256_sub_epi8(lb_nibbles32(x->qs), _mm256_set1_epi8(8));
    }
    case LB_TYPE_Q4_1: {
        const lb_block_q4_1 *x = (const lb_block_q4_1 *)w + b;
        *d = x->d;
        *m = x->m;
        return lb_nibbles32(x->qs);
    }
    case LB_TYPE_Q5_0: {
        /* q - 16 is the nibble if bit 4 is set, else the nibble with 0xf0 on top */
        const lb_block_q5_0 *x = (const lb_block_q5_0 *)w + b;
        *d = x->d;
        return _mm256_or_si256(lb_nibbles32(x->qs), _mm256_andnot_si256(lb_bits32(x->qh), _mm256_set1_epi8((char)0xf0)));
    }
    case LB_TYPE_Q5_1: {
        const lb_block_q5_1 *x = (const lb_block_q5_1 *)w + b;
        *d = x->d;
        *m = x->m;
        return _mm256_or_si256(lb_nibbles32(x->qs), _mm256_and_si256(lb_bits32(x->qh), _mm256_set1_epi8(16)));
    }
    case LB_TYPE_IQ4_NL: {
        const lb_block_iq4_nl *x = (const lb_block_iq4_nl *)w + b;
        *d = x->d;
        const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)lb_kvalues_iq4nl));
        return _mm256_shuffle_epi8(table, lb_nibbles32(x->qs));
    }
    default: { /* LB_TYPE_Q8_0 */
        const lb_block_q8_0 *x = (const lb_block_q8_0 *)w + b;
        *d = x->d;
        return lb_loadu256(x->qs);
    }
    }
}

/* 8 int32 lanes, each the sum of 4 products of the 32 int8 q (in order)
 * with the 32 int16 at y. */
LB_INLINE __m256i lb_mul_s8s16(__m256i q, const int16_t *y) {
    const __m256i lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
    const __m256i hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1));
    return lb_madd_acc(_mm256_madd_epi16(lo, lb_loadu256(y)), hi, lb_loadu256(y + 16));
}

/* Lane i = the sum of the 8 lanes of p[i]. */
LB_INLINE __m128i lb_reduce4(__m256i p0, __m256i p1, __m256i p2, __m256i p3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* Four fp16 values -> float. */
LB_INLINE __m128 lb_h2f_x4(const uint16_t h[4]) {
    return _mm_cvtph_ps(_mm_setr_epi16((short)h[0], (short)h[1], (short)h[2], (short)h[3], 0, 0, 0, 0));
}

/* Blocks b0..b0+cnt-1 (cnt <= 4, b0 a multiple of 4) against nc activation
 * rows (Q16 for Q8_0, Q8_1 for Q4_1 and Q5_1, else Q8_0), with the
 * reference's float operations per block, (float)isum * (dx * dy) [+ m * s],
 * added lane-wise to acc[c]: lane i is the reference's partial
 * sum of blocks i mod 4 (lb_fold4). Missing blocks of a tail add exact zeros.
 * The scales are converted four at a time from registers (a vector load of
 * four scalar stores would stall on store forwarding). */
LB_INLINE void lb_group32(const int type, const void *w, const uint8_t *a, size_t a_stride, int64_t b0, const int cnt,
                          const int nc, __m128 *acc) {
    const int q81 = type == LB_TYPE_Q4_1 || type == LB_TYPE_Q5_1;
    __m256i q[4];
    uint16_t hd[4] = {0, 0, 0, 0}, hm[4] = {0, 0, 0, 0};
    LB_UNROLL
    for (int i = 0; i < 4; i++) {
        q[i] = i < cnt ? lb_unpack32(type, w, b0 + i, &hd[i], &hm[i]) : _mm256_setzero_si256();
    }
    const __m128 vdx = lb_h2f_x4(hd), vmx = lb_h2f_x4(hm);
    LB_UNROLL
    for (int c = 0; c < nc; c++) {
        const uint8_t *ac = a + (size_t)c * a_stride;
        __m256i p[4];
        uint16_t hy[4] = {0, 0, 0, 0}, hs[4] = {0, 0, 0, 0};
        float fy[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        LB_UNROLL
        for (int i = 0; i < 4; i++) {
            if (i >= cnt) {
                p[i] = _mm256_setzero_si256();
            } else if (type == LB_TYPE_Q8_0) {
                const lb_block_q16 *y = (const lb_block_q16 *)ac + b0 + i;
                p[i] = lb_mul_s8s16(q[i], y->qs);
                fy[i] = y->d;
            } else if (q81) {
                const lb_block_q8_1 *y = (const lb_block_q8_1 *)ac + b0 + i;
                p[i] = lb_mul_u8s8(q[i], lb_loadu256(y->qs));
                hy[i] = y->d;
                hs[i] = y->s;
            } else {
                const lb_block_q8_0 *y = (const lb_block_q8_0 *)ac + b0 + i;
                p[i] = lb_mul_s8s8(q[i], lb_loadu256(y->qs));
                hy[i] = y->d;
            }
        }
        const __m128 dy = type == LB_TYPE_Q8_0 ? _mm_setr_ps(fy[0], fy[1], fy[2], fy[3]) : lb_h2f_x4(hy);
        __m128 t = _mm_mul_ps(_mm_cvtepi32_ps(lb_reduce4(p[0], p[1], p[2], p[3])), _mm_mul_ps(vdx, dy));
        if (q81) {
            t = _mm_add_ps(t, _mm_mul_ps(vmx, lb_h2f_x4(hs)));
        }
        acc[c] = _mm_add_ps(acc[c], t);
    }
}

/* lb_fold4 of the four lanes: (a0 + a2) + (a1 + a3). */
LB_INLINE float lb_fold4_ps(__m128 v) {
    const __m128 h = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

LB_INLINE void lb_dot32(const int type, int64_t n, float *s, int64_t ld_s, const void *w, const void *a,
                        size_t a_stride, const int nc) {
    const int64_t nb = n / 32;
    __m128 acc[LB_MULTI_MAX];
    for (int c = 0; c < nc; c++) {
        acc[c] = _mm_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        lb_group32(type, w, (const uint8_t *)a, a_stride, b, 4, nc, acc);
    }
    if (b < nb) {
        lb_group32(type, w, (const uint8_t *)a, a_stride, b, (int)(nb - b), nc, acc);
    }
    for (int c = 0; c < nc; c++) {
        s[c * ld_s] = lb_fold4_ps(acc[c]);
    }
}

/* ---- K-quants against q8_K --------------------------------------------------
 * Quants are unpacked 32 at a time as unsigned bytes; maddubs gives int16
 * pair sums, and a madd with the sub-block scales both applies them and
 * widens to int32. Offsets (q3_K's -4, q6_K's -32) and mins come from q8_K's
 * bsums, so no signed unpacking is needed. */

/* q3_K's 12 scale bytes (see lb_unpack_scales_q3_K) -> its 16 scales, re-centred
 * to -32..31, by 32-bit operations on 4 scales at a time. */
LB_INLINE __m128i lb_scales_q3_K(const uint8_t b[LB_K_SCALE_SIZE]) {
    uint32_t a0, a1, hi;
    memcpy(&a0, b, 4);
    memcpy(&a1, b + 4, 4);
    memcpy(&hi, b + 8, 4);
    const uint32_t m4 = 0x0f0f0f0fu, m2 = 0x03030303u;
    const __m128i v = _mm_setr_epi32((int)((a0 & m4) | (hi & m2) << 4), (int)((a1 & m4) | (hi >> 2 & m2) << 4),
                                     (int)((a0 >> 4 & m4) | (hi >> 4 & m2) << 4),
                                     (int)((a1 >> 4 & m4) | (hi >> 6 & m2) << 4));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

/* q4_K/q5_K's 12 scale bytes (see lb_unpack_scales_k4) -> the 8 scales in
 * bytes 0-7 and the 8 mins in bytes 8-15, by 32-bit operations on 4 bytes
 * at a time. */
LB_INLINE __m128i lb_scales_mins_k4(const uint8_t b[LB_K_SCALE_SIZE]) {
    uint32_t u0, u1, u2;
    memcpy(&u0, b, 4);
    memcpy(&u1, b + 4, 4);
    memcpy(&u2, b + 8, 4);
    const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 & 0xc0c0c0c0u) >> 2);
    const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 & 0xc0c0c0c0u) >> 2);
    const uint64_t sc = (u0 & 0x3f3f3f3fu) | (uint64_t)sc_hi << 32;
    const uint64_t mn = (u1 & 0x3f3f3f3fu) | (uint64_t)mn_hi << 32;
    return _mm_set_epi64x((long long)mn, (long long)sc);
}

#define LB_Y_K(c, b) ((const lb_block_q8_K *)((const uint8_t *)a + (size_t)(c) * a_stride) + (b))

LB_INLINE void lb_dot_q2_K(int64_t n, float *s, int64_t ld_s, const void *w, const void *a, size_t a_stride,
                           const int nc) {
    const lb_block_q2_K *x = (const lb_block_q2_K *)w;
    const int64_t nb = n / LB_QK_K;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256i pair[4];
    lb_pair_sels(pair);
    float acc[LB_MULTI_MAX];
    for (int c = 0; c < nc; c++) {
        acc[c] = 0.0f;
    }
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_h2f(x[b].d), dmin = lb_h2f(x[b].dmin);
        const __m128i sc_raw = _mm_loadu_si128((const __m128i *)x[b].scales);
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc_raw, 4), _mm_set1_epi8(15)));
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sc_raw, _mm_set1_epi8(15)));
        __m256i sc_half[2];
        lb_scale_groups(sc16, sc_half);
        __m256i isum[LB_MULTI_MAX];
        for (int c = 0; c < nc; c++) {
            isum[c] = _mm256_setzero_si256();
        }
        for (int h = 0; h < 2; h++) {
            __m256i qs = lb_loadu256(x[b].qs + 32 * h);
            for (int k = 0; k < 4; k++) {
                const __m256i q = _mm256_and_si256(qs, m3);
                qs = _mm256_srli_epi16(qs, 2);
                const __m256i sc = _mm256_shuffle_epi8(sc_half[h], pair[k]); /* scales 8h + 2k, 8h + 2k + 1 */
                LB_UNROLL
                for (int c = 0; c < nc; c++) {
                    const __m256i p = _mm256_maddubs_epi16(q, lb_loadu256(LB_Y_K(c, b)->qs + 128 * h + 32 * k));
                    isum[c] = lb_madd_acc(isum[c], p, sc);
                }
            }
        }
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            const lb_block_q8_K *y = LB_Y_K(c, b);
            const int32_t msum = lb_hsum_epi32(_mm256_madd_epi16(mins, lb_loadu256(y->bsums)));
            const float dall = y->d * d, dm = y->d * dmin;
            acc[c] += dall * (float)lb_hsum_epi32(isum[c]) - dm * (float)msum;
        }
    }
    for (int c = 0; c < nc; c++) {
        s[c * ld_s] = acc[c];
    }
}

LB_INLINE void lb_dot_q3_K(int64_t n, float *s, int64_t ld_s, const void *w, const void *a, size_t a_stride,
                           const int nc) {
    const lb_block_q3_K *x = (const lb_block_q3_K *)w;
    const int64_t nb = n / LB_QK_K;
    const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    __m256i pair[4];
    lb_pair_sels(pair);
    float acc[LB_MULTI_MAX];
    for (int c = 0; c < nc; c++) {
        acc[c] = 0.0f;
    }
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_h2f(x[b].d);
        const __m256i sc16 = _mm256_cvtepi8_epi16(lb_scales_q3_K(x[b].scales));
        __m256i sc_half[2];
        lb_scale_groups(sc16, sc_half);
        __m256i isum[LB_MULTI_MAX];
        for (int c = 0; c < nc; c++) {
            isum[c] = _mm256_setzero_si256();
        }
        __m256i hm = lb_loadu256(x[b].hmask);
        for (int h = 0; h < 2; h++) {
            __m256i qs = lb_loadu256(x[b].qs + 32 * h);
            for (int k = 0; k < 4; k++) {
                /* q + 4 in 0..7: the low bits plus 4 where the high bit is set */
                const __m256i q = _mm256_or_si256(_mm256_and_si256(qs, m3),
                                                  _mm256_slli_epi16(_mm256_and_si256(hm, one), 2));
                qs = _mm256_srli_epi16(qs, 2);
                hm = _mm256_srli_epi16(hm, 1);
                const __m256i scv = _mm256_shuffle_epi8(sc_half[h], pair[k]); /* scales 8h + 2k, 8h + 2k + 1 */
                LB_UNROLL
                for (int c = 0; c < nc; c++) {
                    const __m256i p = _mm256_maddubs_epi16(q, lb_loadu256(LB_Y_K(c, b)->qs + 128 * h + 32 * k));
                    isum[c] = lb_madd_acc(isum[c], p, scv);
                }
            }
        }
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            const lb_block_q8_K *y = LB_Y_K(c, b);
            const __m256i ofs = _mm256_madd_epi16(sc16, lb_loadu256(y->bsums)); /* sum sc * y per lane pair */
            const __m256i tot = _mm256_sub_epi32(isum[c], _mm256_slli_epi32(ofs, 2));
            acc[c] += (d * y->d) * (float)lb_hsum_epi32(tot);
        }
    }
    for (int c = 0; c < nc; c++) {
        s[c * ld_s] = acc[c];
    }
}

/* q4_K and q5_K (with_high): 8 sub-blocks of 32 with 6-bit scales and mins. */
LB_INLINE void lb_dot_q45_K(const int with_high, int64_t n, float *s, int64_t ld_s, const void *w, const void *a,
                            size_t a_stride, const int nc) {
    const int64_t nb = n / LB_QK_K;
    const size_t bsize = with_high ? sizeof(lb_block_q5_K) : sizeof(lb_block_q4_K);
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    const __m128i dup_mins = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    __m256i sel[8]; /* sub-block j's scale in every lane */
    for (int j = 0; j < 8; j++) {
        sel[j] = lb_lane16_sel(j, j);
    }
    float acc[LB_MULTI_MAX];
    for (int c = 0; c < nc; c++) {
        acc[c] = 0.0f;
    }
    for (int64_t b = 0; b < nb; b++) {
        const void *blk = (const uint8_t *)w + (size_t)b * bsize;
        const lb_block_q4_K *x4 = (const lb_block_q4_K *)blk;
        const lb_block_q5_K *x5 = (const lb_block_q5_K *)blk;
        const uint8_t *qs_base = with_high ? x5->qs : x4->qs;
        const float d = lb_h2f(with_high ? x5->d : x4->d), dmin = lb_h2f(with_high ? x5->dmin : x4->dmin);
        const __m128i sm = lb_scales_mins_k4(with_high ? x5->scales : x4->scales);
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, dup_mins));
        const __m256i scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        __m256i qh = with_high ? lb_loadu256(x5->qh) : _mm256_setzero_si256();
        __m256i isum[LB_MULTI_MAX];
        for (int c = 0; c < nc; c++) {
            isum[c] = _mm256_setzero_si256();
        }
        for (int cc = 0; cc < 4; cc++) {
            const __m256i raw = lb_loadu256(qs_base + 32 * cc);
            __m256i lo = _mm256_and_si256(raw, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if (with_high) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4));
                qh = _mm256_srli_epi16(qh, 2);
            }
            const __m256i s0 = _mm256_shuffle_epi8(scales, sel[2 * cc]);
            const __m256i s1 = _mm256_shuffle_epi8(scales, sel[2 * cc + 1]);
            LB_UNROLL
            for (int c = 0; c < nc; c++) {
                const int8_t *yq = LB_Y_K(c, b)->qs + 64 * cc;
                isum[c] = lb_madd_acc(isum[c], _mm256_maddubs_epi16(lo, lb_loadu256(yq)), s0);
                isum[c] = lb_madd_acc(isum[c], _mm256_maddubs_epi16(hi, lb_loadu256(yq + 32)), s1);
            }
        }
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            const lb_block_q8_K *y = LB_Y_K(c, b);
            const int32_t msum = lb_hsum_epi32(_mm256_madd_epi16(mins, lb_loadu256(y->bsums)));
            const float dall = y->d * d, dm = y->d * dmin;
            acc[c] += dall * (float)lb_hsum_epi32(isum[c]) - dm * (float)msum;
        }
    }
    for (int c = 0; c < nc; c++) {
        s[c * ld_s] = acc[c];
    }
}

LB_INLINE void lb_dot_q6_K(int64_t n, float *s, int64_t ld_s, const void *w, const void *a, size_t a_stride,
                           const int nc) {
    const lb_block_q6_K *x = (const lb_block_q6_K *)w;
    const int64_t nb = n / LB_QK_K;
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    __m256i pair[4];
    lb_pair_sels(pair);
    float acc[LB_MULTI_MAX];
    for (int c = 0; c < nc; c++) {
        acc[c] = 0.0f;
    }
    for (int64_t b = 0; b < nb; b++) {
        const float d = lb_h2f(x[b].d);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[b].scales));
        /* scales 0-7, then 8-15, in both 128-bit halves */
        __m256i sc_half[2];
        lb_scale_groups(sc16, sc_half);
        __m256i isum[LB_MULTI_MAX];
        for (int c = 0; c < nc; c++) {
            isum[c] = _mm256_setzero_si256();
        }
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = lb_loadu256(x[b].ql + 64 * h), l1 = lb_loadu256(x[b].ql + 64 * h + 32);
            const __m256i qh = lb_loadu256(x[b].qh + 32 * h);
            __m256i q[4];
            /* unsigned q in 0..63; bit pair k of qh lands on bits 4-5 */
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            for (int k = 0; k < 4; k++) {
                const __m256i scv = _mm256_shuffle_epi8(sc_half[h], pair[k]); /* scales 8h + 2k, 8h + 2k + 1 */
                LB_UNROLL
                for (int c = 0; c < nc; c++) {
                    const __m256i p = _mm256_maddubs_epi16(q[k], lb_loadu256(LB_Y_K(c, b)->qs + 128 * h + 32 * k));
                    isum[c] = lb_madd_acc(isum[c], p, scv);
                }
            }
        }
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            const lb_block_q8_K *y = LB_Y_K(c, b);
            const __m256i ofs = _mm256_madd_epi16(sc16, lb_loadu256(y->bsums));
            const __m256i tot = _mm256_sub_epi32(isum[c], _mm256_slli_epi32(ofs, 5)); /* q - 32 */
            acc[c] += (d * y->d) * (float)lb_hsum_epi32(tot);
        }
    }
    for (int c = 0; c < nc; c++) {
        s[c * ld_s] = acc[c];
    }
}

#undef LB_Y_K

/* ---- float weights against float activations ---------------------------------- */

LB_INLINE __m256 lb_load8f(const int type, const void *w, int64_t i) {
    switch (type) {
    case LB_TYPE_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    case LB_TYPE_BF16:
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i))), 16));
    default:
        return _mm256_loadu_ps((const float *)w + i);
    }
}

LB_INLINE float lb_load1f(const int type, const void *w, int64_t i) {
    switch (type) {
    case LB_TYPE_F16:
        return lb_h2f(((const uint16_t *)w)[i]);
    case LB_TYPE_BF16:
        return lb_bf16_to_fp32(((const uint16_t *)w)[i]);
    default:
        return ((const float *)w)[i];
    }
}

LB_INLINE void lb_dot_float(const int type, int64_t n, float *s, int64_t ld_s, const void *w, const void *a,
                            size_t a_stride, const int nc) {
    __m256 acc0[LB_MULTI_MAX], acc1[LB_MULTI_MAX];
    for (int c = 0; c < nc; c++) {
        acc0[c] = _mm256_setzero_ps();
        acc1[c] = _mm256_setzero_ps();
    }
#define LB_Y_F(c) ((const float *)((const uint8_t *)a + (size_t)(c) * a_stride))
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 w0 = lb_load8f(type, w, i), w1 = lb_load8f(type, w, i + 8);
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            acc0[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(LB_Y_F(c) + i), acc0[c]);
            acc1[c] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(LB_Y_F(c) + i + 8), acc1[c]);
        }
    }
    if (i + 8 <= n) {
        const __m256 w0 = lb_load8f(type, w, i);
        for (int c = 0; c < nc; c++) {
            acc0[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(LB_Y_F(c) + i), acc0[c]);
        }
        i += 8;
    }
    for (int c = 0; c < nc; c++) {
        float sum = lb_hsum_ps(_mm256_add_ps(acc0[c], acc1[c]));
        for (int64_t k = i; k < n; k++) {
            sum += lb_load1f(type, w, k) * LB_Y_F(c)[k];
        }
        s[c * ld_s] = sum;
    }
#undef LB_Y_F
}

/* ---- attention helpers (see kernels.h for the summation order) ---------------- */

/* Up to 8 fp16 values from k[0..cnt), zeros after. */
LB_INLINE __m256 lb_load_f16_part(const uint16_t *k, int64_t cnt) {
    uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(tmp, k, (size_t)cnt * sizeof *k);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tmp));
}

static float lb_x86_attn_dot(int64_t n, const float *q, const uint16_t *k) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i)));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(q + i), kv));
    }
    if (i < n) { /* zero lanes add +0, which leaves a partial sum as it is */
        float qt[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        memcpy(qt, q + i, (size_t)(n - i) * sizeof *q);
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(qt), lb_load_f16_part(k + i, n - i)));
    }
    return lb_hsum_ps(acc);
}

static void lb_x86_attn_axpy(int64_t n, float w, const uint16_t *v, float *o) {
    const __m256 vw = _mm256_set1_ps(w);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i)));
        _mm256_storeu_ps(o + i, _mm256_add_ps(_mm256_loadu_ps(o + i), _mm256_mul_ps(vw, vv)));
    }
    for (; i < n; i++) {
        o[i] += w * lb_h2f(v[i]);
    }
}

LB_INLINE __m256 lb_f16x8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* Head sizes the multi-query kernels stage in f32 on the stack (a multiple of
 * 8 up to this; others take the key-by-key kernels). */
#define LB_ATT_DMAX 256
/* Values converted per staging round of lb_x86_attn_wsum_f16. */
#define LB_ATT_VKEYS 16
/* Cached rows are prefetched LB_ATT_AHEAD keys ahead: decoding measured
 * slower attention without it, although one head's rows lie together. */
#define LB_ATT_AHEAD 16

LB_INLINE void lb_prefetch_row(const uint8_t *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) {
        _mm_prefetch((const char *)(p + o), _MM_HINT_T0);
    }
}

/* Lane c = lb_hsum_ps(a[c]): the same additions in the same tree for 8
 * vectors at once. u[c] holds lo + hi of a[c] (low half) and a[c + 4]. */
LB_INLINE __m256 lb_hsum8_ps(const __m256 a[8]) {
    __m256 u[4];
    LB_UNROLL
    for (int c = 0; c < 4; c++) {
        u[c] = _mm256_add_ps(_mm256_permute2f128_ps(a[c], a[c + 4], 0x20),
                             _mm256_permute2f128_ps(a[c], a[c + 4], 0x31));
    }
    const __m256 v01 = _mm256_add_ps(_mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 v23 = _mm256_add_ps(_mm256_shuffle_ps(u[2], u[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm256_shuffle_ps(u[2], u[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_shuffle_ps(v01, v23, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm256_shuffle_ps(v01, v23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Keys go 8 at a time: converted once to f32 (chunk i of key c at
 * kt[(i * 8 + c) * 8]) for all nq queries, each query's 8 sums kept apart in
 * 8 registers so that their dependency chains overlap, and reduced together.
 * Every score gets lb_x86_attn_dot's operations. With 512-bit vectors, two
 * keys share a register: the query's 8 floats go to both halves. */
static void lb_x86_attn_scores_f16(int64_t n, int nq, const float *const *q, int64_t n_keys, const void *k,
                                   size_t k_stride, float *s, size_t s_stride) {
    const uint8_t *kr = (const uint8_t *)k;
    int64_t p = 0;
    if (n % 8 == 0 && n <= LB_ATT_DMAX) {
        const int64_t nc = n / 8;
        float kt[LB_ATT_DMAX * 8];
        for (; p + 8 <= n_keys; p += 8) {
            for (int c = 0; c < 8; c++) {
                const uint16_t *row = (const uint16_t *)(kr + (size_t)(p + c) * k_stride);
                if (p + c + LB_ATT_AHEAD < n_keys) {
                    lb_prefetch_row(kr + (size_t)(p + c + LB_ATT_AHEAD) * k_stride, (size_t)n * 2);
                }
                int64_t i = 0;
#if LB_X86_VNNI
                for (; i + 2 <= nc; i += 2) { /* chunks i and i + 1 in one conversion */
                    const __m512 kv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 8 * i)));
                    _mm256_storeu_ps(kt + (i * 8 + c) * 8, _mm512_castps512_ps256(kv));
                    _mm256_storeu_ps(kt + ((i + 1) * 8 + c) * 8,
                                     _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(kv), 1)));
                }
#endif
                for (; i < nc; i++) {
                    _mm256_storeu_ps(kt + (i * 8 + c) * 8, lb_f16x8(row + 8 * i));
                }
            }
            for (int j = 0; j < nq; j++) {
                const float *qj = q[j];
                __m256 acc[8];
#if LB_X86_VNNI
                __m512 acc2[4];
                LB_UNROLL
                for (int c = 0; c < 4; c++) {
                    acc2[c] = _mm512_setzero_ps();
                }
                for (int64_t i = 0; i < nc; i++) {
                    /* the query's 8 floats in both halves */
                    const __m256d q8 = _mm256_castps_pd(_mm256_loadu_ps(qj + 8 * i));
                    const __m512 qv = _mm512_castpd_ps(_mm512_broadcast_f64x4(q8));
                    LB_UNROLL
                    for (int c = 0; c < 4; c++) {
                        acc2[c] = _mm512_add_ps(acc2[c], _mm512_mul_ps(qv, _mm512_loadu_ps(kt + (i * 8 + 2 * c) * 8)));
                    }
                }
                LB_UNROLL
                for (int c = 0; c < 4; c++) {
                    acc[2 * c] = _mm512_castps512_ps256(acc2[c]);
                    acc[2 * c + 1] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc2[c]), 1));
                }
#else
                LB_UNROLL
                for (int c = 0; c < 8; c++) {
                    acc[c] = _mm256_setzero_ps();
                }
                for (int64_t i = 0; i < nc; i++) {
                    const __m256 qv = _mm256_loadu_ps(qj + 8 * i);
                    LB_UNROLL
                    for (int c = 0; c < 8; c++) {
                        acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(qv, _mm256_loadu_ps(kt + (i * 8 + c) * 8)));
                    }
                }
#endif
                _mm256_storeu_ps(s + (size_t)j * s_stride + p, lb_hsum8_ps(acc));
            }
        }
    }
    for (; p < n_keys; p++) {
        const uint16_t *row = (const uint16_t *)(kr + (size_t)p * k_stride);
        for (int j = 0; j < nq; j++) {
            s[(size_t)j * s_stride + p] = lb_x86_attn_dot(n, q[j], row);
        }
    }
}

/* The vector the weighted sums accumulate in: 512 bits on the AVX-512 path,
 * 256 on AVX2. Their sums are per element, so the width changes no float. */
#if LB_X86_VNNI
#define LB_VW 16
typedef __m512 lb_vf;
#define lb_vf_loadu _mm512_loadu_ps
#define lb_vf_storeu _mm512_storeu_ps
#define lb_vf_set1 _mm512_set1_ps
#define lb_vf_add _mm512_add_ps
#define lb_vf_mul _mm512_mul_ps
#else
#define LB_VW 8
typedef __m256 lb_vf;
#define lb_vf_loadu _mm256_loadu_ps
#define lb_vf_storeu _mm256_storeu_ps
#define lb_vf_set1 _mm256_set1_ps
#define lb_vf_add _mm256_add_ps
#define lb_vf_mul _mm256_mul_ps
#endif

/* o = 0, then for each key in order o += w * v (lb_x86_attn_axpy's product
 * and sum, element by element). Values are converted to f32 LB_ATT_VKEYS
 * keys at a time and shared by every query; a query's outputs stay in
 * registers, 64 at a time, over those keys. */
static void lb_x86_attn_wsum_f16(int64_t n, int nq, const float *w, size_t w_stride, const int64_t *n_keys,
                                 const void *v, size_t v_stride, float *const *o) {
    const uint8_t *vr = (const uint8_t *)v;
    int64_t kmax = 0;
    for (int j = 0; j < nq; j++) {
        memset(o[j], 0, (size_t)n * sizeof(float));
        kmax = n_keys[j] > kmax ? n_keys[j] : kmax;
    }
    if (n % 8 != 0 || n > LB_ATT_DMAX) {
        for (int j = 0; j < nq; j++) {
            for (int64_t p = 0; p < n_keys[j]; p++) {
                lb_x86_attn_axpy(n, w[(size_t)j * w_stride + p], (const uint16_t *)(vr + (size_t)p * v_stride), o[j]);
            }
        }
        return;
    }
    float vt[LB_ATT_VKEYS * LB_ATT_DMAX];
    for (int64_t p0 = 0; p0 < kmax; p0 += LB_ATT_VKEYS) {
        const int64_t kb = kmax - p0 < LB_ATT_VKEYS ? kmax - p0 : LB_ATT_VKEYS;
        for (int64_t c = 0; c < kb; c++) {
            const uint16_t *row = (const uint16_t *)(vr + (size_t)(p0 + c) * v_stride);
            if (p0 + c + LB_ATT_AHEAD < kmax) {
                lb_prefetch_row(vr + (size_t)(p0 + c + LB_ATT_AHEAD) * v_stride, (size_t)n * 2);
            }
            int64_t i = 0;
#if LB_X86_VNNI
            for (; i + 16 <= n; i += 16) {
                _mm512_storeu_ps(vt + c * n + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + i))));
            }
#endif
            for (; i < n; i += 8) {
                _mm256_storeu_ps(vt + c * n + i, lb_f16x8(row + i));
            }
        }
        for (int j = 0; j < nq; j++) {
            const int64_t ne = (n_keys[j] < p0 + kb ? n_keys[j] : p0 + kb) - p0;
            if (ne <= 0) {
                continue;
            }
            const float *wj = w + (size_t)j * w_stride + p0;
            float *oj = o[j];
            int64_t i0 = 0;
            for (; i0 + 64 <= n; i0 += 64) {
                lb_vf acc[64 / LB_VW];
                LB_UNROLL
                for (int c = 0; c < 64 / LB_VW; c++) {
                    acc[c] = lb_vf_loadu(oj + i0 + LB_VW * c);
                }
                for (int64_t e = 0; e < ne; e++) {
                    const lb_vf wv = lb_vf_set1(wj[e]);
                    LB_UNROLL
                    for (int c = 0; c < 64 / LB_VW; c++) {
                        acc[c] = lb_vf_add(acc[c], lb_vf_mul(wv, lb_vf_loadu(vt + e * n + i0 + LB_VW * c)));
                    }
                }
                LB_UNROLL
                for (int c = 0; c < 64 / LB_VW; c++) {
                    lb_vf_storeu(oj + i0 + LB_VW * c, acc[c]);
                }
            }
            for (; i0 < n; i0 += 8) {
                __m256 acc = _mm256_loadu_ps(oj + i0);
                for (int64_t e = 0; e < ne; e++) {
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(wj[e]), _mm256_loadu_ps(vt + e * n + i0)));
                }
                _mm256_storeu_ps(oj + i0, acc);
            }
        }
    }
}

/* lb_exp_ref on 8 lanes: the same operations, out-of-range lanes replaced
 * by its special values afterwards. */
LB_INLINE __m256 lb_exp_ps(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.0f);
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    const __m256 xl = _mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f));
    const __m256 n = _mm256_sub_ps(_mm256_add_ps(xl, magic), magic);
    __m256 r = _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

LB_INLINE float lb_hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* lb_softmax_ref: the max and the sum in 8 lanes, the tails in the lanes the
 * reference gives them (element p in partial sum p % 8). */
static void lb_x86_softmax(int64_t n, float *x, float scale, float *stats) {
    const int64_t n8 = n & ~(int64_t)7;
    const __m256 vs = _mm256_set1_ps(scale);
    __m256 mv = _mm256_set1_ps(-INFINITY);
    for (int64_t p = 0; p < n8; p += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + p), vs);
        _mm256_storeu_ps(x + p, v);
        mv = _mm256_max_ps(v, mv); /* v > m ? v : m, as the reference */
    }
    /* no lane holds a NaN, so the order of the lanes can only choose between
     * +0 and -0, and x - (+0) and x - (-0) have the same exp */
    float mx = lb_hmax_ps(mv);
    for (int64_t p = n8; p < n; p++) {
        x[p] *= scale;
        mx = x[p] > mx ? x[p] : mx;
    }
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 sv = _mm256_setzero_ps();
    for (int64_t p = 0; p < n8; p += 8) {
        const __m256 e = lb_exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + p), vm));
        _mm256_storeu_ps(x + p, e);
        sv = _mm256_add_ps(sv, e);
    }
    float s[8];
    _mm256_storeu_ps(s, sv);
    for (int64_t p = n8; p < n; p++) {
        x[p] = lb_exp_ref(x[p] - mx);
        s[p % 8] += x[p];
    }
    const float sum = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
    const float inv = 1.0f / sum;
    if (stats) {
        stats[0] = mx;
        stats[1] = sum;
    }
    const __m256 vi = _mm256_set1_ps(inv);
    for (int64_t p = 0; p < n8; p += 8) {
        _mm256_storeu_ps(x + p, _mm256_mul_ps(_mm256_loadu_ps(x + p), vi));
    }
    for (int64_t p = n8; p < n; p++) {
        x[p] *= inv;
    }
}

static void lb_x86_swiglu(int64_t n, float *g, const float *u) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = lb_exp_ps(_mm256_xor_ps(gv, _mm256_set1_ps(-0.0f)));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    lb_swiglu_ref(n - i, g + i, u + i);
}

/* Lane i = the sum of the 8 lanes of p[i]. */
LB_INLINE __m256i lb_reduce8(const __m256i p[8]) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* Scores of nk keys (1..8, the rows at k + c * k_stride) as the lanes of one
 * vector. Keys go across the lanes rather than blocks, so each block's float
 * steps, (float)isum * (dq * dk) added to the key's sum in block order, are
 * the reference's for 8 keys at once. */
LB_INLINE __m256 lb_scores8_q8_0(const int nk, int64_t nb, const lb_block_q8_0 *q, const uint8_t *k,
                                 size_t k_stride) {
    /* lanes are keys; acc[b % 4] are the reference's partial sums (lb_fold4) */
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
        const __m256i qv = lb_loadu256(q[b].qs);
        const __m256i qa = _mm256_sign_epi8(qv, qv);
        __m256i p[8];
        uint16_t hk[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) {
            if (c < nk) {
                const lb_block_q8_0 *kb = (const lb_block_q8_0 *)(k + (size_t)c * k_stride) + b;
                p[c] = lb_mul_u8s8(qa, _mm256_sign_epi8(lb_loadu256(kb->qs), qv));
                hk[c] = kb->d;
            } else {
                p[c] = _mm256_setzero_si256();
            }
        }
        const __m256 dk = _mm256_cvtph_ps(_mm_setr_epi16((short)hk[0], (short)hk[1], (short)hk[2], (short)hk[3],
                                                         (short)hk[4], (short)hk[5], (short)hk[6], (short)hk[7]));
        const __m256 dd = _mm256_mul_ps(_mm256_set1_ps(lb_h2f(q[b].d)), dk);
        acc[b & 3] = _mm256_add_ps(acc[b & 3], _mm256_mul_ps(_mm256_cvtepi32_ps(lb_reduce8(p)), dd));
    }
    return _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
}

static void lb_x86_attn_scores_q8_0(int64_t n, int64_t n_keys, const void *q, const void *k, size_t k_stride,
                                    float *s) {
    const int64_t nb = n / LB_QK8_0;
    const uint8_t *kr = (const uint8_t *)k;
    int64_t p = 0;
    for (; p + 8 <= n_keys; p += 8) {
        _mm256_storeu_ps(s + p, lb_scores8_q8_0(8, nb, (const lb_block_q8_0 *)q, kr + (size_t)p * k_stride, k_stride));
    }
    if (p < n_keys) {
        const int nk = (int)(n_keys - p);
        float tmp[8];
        _mm256_storeu_ps(tmp, lb_scores8_q8_0(nk, nb, (const lb_block_q8_0 *)q, kr + (size_t)p * k_stride, k_stride));
        memcpy(s + p, tmp, (size_t)nk * sizeof *s);
    }
}

/* 8 int8 -> 8 floats. */
LB_INLINE __m256 lb_i8x8_ps(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}

/* Blocks b0..b0+cnt-1 (cnt 1 or 2) of the output, held in registers over
 * every key: the reference's operations per element, in key order. */
LB_INLINE void lb_wsum_q8_0_blocks(const int cnt, int64_t b0, int64_t n_keys, const float *w, const void *v,
                                   size_t v_stride, float *o) {
    __m256 acc[8];
    for (int i = 0; i < 8; i++) {
        acc[i] = _mm256_setzero_ps();
    }
    for (int64_t p = 0; p < n_keys; p++) {
        const lb_block_q8_0 *x = (const lb_block_q8_0 *)((const uint8_t *)v + (size_t)p * v_stride) + b0;
        LB_UNROLL
        for (int i = 0; i < cnt; i++) {
            const __m256 wd = _mm256_set1_ps(w[p] * lb_h2f(x[i].d));
            LB_UNROLL
            for (int k = 0; k < 4; k++) {
                acc[4 * i + k] = _mm256_add_ps(acc[4 * i + k], _mm256_mul_ps(wd, lb_i8x8_ps(x[i].qs + 8 * k)));
            }
        }
    }
    for (int i = 0; i < 4 * cnt; i++) {
        _mm256_storeu_ps(o + b0 * LB_QK8_0 + 8 * i, acc[i]);
    }
}

static void lb_x86_attn_wsum_q8_0(int64_t n, int64_t n_keys, const float *w, const void *v, size_t v_stride,
                                  float *o) {
    const int64_t nb = n / LB_QK8_0;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        lb_wsum_q8_0_blocks(2, b, n_keys, w, v, v_stride, o);
    }
    if (b < nb) {
        lb_wsum_q8_0_blocks(1, b, n_keys, w, v, v_stride, o);
    }
}

/* ---- activation encoders -----------------------------------------------------
 * Byte for byte the reference encoders of quants.c: the same float
 * operations (max |x|, d = max / 127, x * (1 / d)), and roundf's rounding
 * (to nearest, ties away from zero) done exactly in SIMD. */

/* roundf(v), clamped to +-limit, NaN -> 0, as lb_round_clamp. */
LB_INLINE __m256i lb_round_clamp_ps(__m256 v, float limit) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t)); /* exact: |v - trunc(v)| */
    const __m256 away = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, sign));
    __m256 r = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), away));
    const __m256 ordered = _mm256_cmp_ps(r, r, _CMP_ORD_Q);
    r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-limit)), _mm256_set1_ps(limit));
    return _mm256_cvtps_epi32(_mm256_and_ps(r, ordered));
}

/* 32 int32 (4 vectors, in order) -> 32 int8, in order. */
LB_INLINE __m256i lb_pack_i8(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* max |x| over 32 floats; a NaN is skipped as in the scalar loop (max_ps
 * returns its second operand when either is NaN). */
LB_INLINE float lb_absmax32(const float *x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < 32; i += 8) {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* The 32 quants of x * id as 4 vectors of int32. */
LB_INLINE void lb_quant32(const float *x, float id, __m256i q[4]) {
    const __m256 vid = _mm256_set1_ps(id);
    for (int i = 0; i < 4; i++) {
        q[i] = lb_round_clamp_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), vid), 127.0f);
    }
}

static void lb_x86_quantize_q8_0(const float *src, void *dst, int64_t n) {
    lb_block_q8_0 *y = (lb_block_q8_0 *)dst;
    for (int64_t b = 0; b < n / LB_QK8_0; b++) {
        const float *x = src + b * LB_QK8_0;
        const float d = lb_absmax32(x) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        __m256i q[4];
        lb_quant32(x, id, q);
        y[b].d = lb_fp32_to_fp16(d);
        _mm256_storeu_si256((__m256i *)y[b].qs, lb_pack_i8(q[0], q[1], q[2], q[3]));
    }
}

static void lb_x86_quantize_q8_1(const float *src, void *dst, int64_t n) {
    lb_block_q8_1 *y = (lb_block_q8_1 *)dst;
    for (int64_t b = 0; b < n / LB_QK8_1; b++) {
        const float *x = src + b * LB_QK8_1;
        const float d = lb_absmax32(x) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        __m256i q[4];
        lb_quant32(x, id, q);
        const int32_t sum =
            lb_hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        _mm256_storeu_si256((__m256i *)y[b].qs, lb_pack_i8(q[0], q[1], q[2], q[3]));
        y[b].d = lb_fp32_to_fp16(d);
        y[b].s = lb_fp32_to_fp16((float)sum * d);
    }
}

static void lb_x86_quantize_q16(const float *src, void *dst, int64_t n) {
    lb_block_q16 *y = (lb_block_q16 *)dst;
    for (int64_t b = 0; b < n / LB_QK16; b++) {
        const float *x = src + b * LB_QK16;
        const float amax = lb_absmax32(x);
        const float d = amax >= LB_Q16_TINY ? amax / 32767.0f : 0.0f;
        const __m256 vid = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
        y[b].d = d;
        for (int i = 0; i < LB_QK16; i += 16) {
            const __m256i q0 = lb_round_clamp_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vid), 32767.0f);
            const __m256i q1 = lb_round_clamp_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vid), 32767.0f);
            /* packs works per 128-bit lane: restore the order of the 64-bit quarters */
            const __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xd8);
            _mm256_storeu_si256((__m256i *)(y[b].qs + i), p);
        }
    }
}

LB_INLINE int lb_ctz32(uint32_t v) {
#if defined(_MSC_VER) && !defined(__clang__)
    unsigned long i;
    _BitScanForward(&i, v);
    return (int)i;
#else
    return __builtin_ctz(v);
#endif
}

static void lb_x86_quantize_q8_K(const float *src, void *dst, int64_t n) {
    lb_block_q8_K *y = (lb_block_q8_K *)dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / LB_QK_K; b++) {
        const float *x = src + b * LB_QK_K;
        float amax = 0.0f;
        for (int i = 0; i < LB_QK_K; i += 32) {
            const float m = lb_absmax32(x + i);
            amax = m > amax ? m : amax;
        }
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        /* the reference keeps the first element of largest magnitude */
        float vmax = 0.0f;
        const __m256 vamax = _mm256_set1_ps(amax);
        for (int i = 0; i < LB_QK_K; i += 8) {
            const __m256 ax = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i));
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(ax, vamax, _CMP_EQ_OQ));
            if (hit) {
                vmax = x[i + lb_ctz32((uint32_t)hit)];
                break;
            }
        }
        const float iscale = -127.0f / vmax;
        for (int i = 0; i < LB_QK_K; i += 32) {
            __m256i q[4];
            lb_quant32(x + i, iscale, q);
            _mm256_storeu_si256((__m256i *)(y[b].qs + i), lb_pack_i8(q[0], q[1], q[2], q[3]));
            y[b].bsums[i / 16] = (int16_t)lb_hsum_epi32(_mm256_add_epi32(q[0], q[1]));
            y[b].bsums[i / 16 + 1] = (int16_t)lb_hsum_epi32(_mm256_add_epi32(q[2], q[3]));
        }
        y[b].d = 1.0f / iscale;
    }
}

/* ---- packed groups of 8 rows (kernels.h: lb_block_x8_q4, _q41, _q5, _q8) ---------
 * Lane r of every integer vector belongs to row r of the group. The weight
 * bytes are the unsigned operand where the product instruction allows it:
 * Q4_0's and Q4_1's nibbles (0..15) and Q5_0's 5-bit quants (0..31) on
 * both paths; with VNNI also IQ4_NL's levels, looked up plus 128. The
 * offset (8, 16 or 128) times the activation block's quant sum then comes
 * off the integer sum, which leaves it exact. Without VNNI, maddubs would
 * saturate its int16 pair sums on bytes up to 255, so IQ4_NL multiplies
 * signed bytes with the sign trick instead. Q8_0 meets 16-bit activations:
 * its quants are widened to int16 for pair products (lb_group_x8_q8). */

/* Decoding streams each weight once (a prompt's tiles reuse theirs from
 * cache, where prefetching only evicts). The groups lie one after another,
 * so the bytes LB_PF_BYTES past block b will be read soon; the hardware
 * prefetcher stops at every 4 KiB page, and this keeps memory busy across
 * them (up to 2x when streaming, measured). Past the end of the matrix it
 * is harmless: a prefetch never faults, and the address is formed as an
 * integer. */
#define LB_PF_BYTES 4096

/* Bytes of one packed block of 8 rows. */
#define LB_X8_BLOCK(type)                                                                                  \
    ((type) == LB_TYPE_Q8_0   ? sizeof(lb_block_x8_q8)                                                     \
     : (type) == LB_TYPE_Q5_0 ? sizeof(lb_block_x8_q5)                                                     \
     : (type) == LB_TYPE_Q4_1 ? sizeof(lb_block_x8_q41)                                                    \
                              : sizeof(lb_block_x8_q4))

/* log2 of the offset that unsigned weight bytes carry (0: none; Q4_1's
 * quants are unsigned as they are), and whether the bytes are signed. */
#define LB_X8_BIAS_SHIFT(type)                                                                             \
    ((type) == LB_TYPE_Q4_0 ? 3 : (type) == LB_TYPE_Q5_0 ? 4 : (type) == LB_TYPE_Q4_1 ? 0 : (LB_X86_VNNI ? 7 : 0))
#define LB_X8_SIGNED(type) (!LB_X86_VNNI && (type) == LB_TYPE_IQ4_NL)

/* The quants of activation block b of the type's vec_dot_type (Q8_1 for
 * Q4_1, else Q8_0). */
LB_INLINE const int8_t *lb_x8_act(const int type, const uint8_t *a, int64_t b) {
    return type == LB_TYPE_Q4_1 ? ((const lb_block_q8_1 *)a + b)->qs : ((const lb_block_q8_0 *)a + b)->qs;
}

/* Byte pattern that copies byte bb of each 32-bit lane to all four of its
 * bytes, and the bit of element 4k + j (j the byte in the lane) within
 * that byte: Q5_0's high bits, from each row's 32-bit word in its lane. */
LB_INLINE __m256i lb_q5_spread(int k) {
    const __m256i lane = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 0, 0, 0, 0, 4, 4, 4, 4,
                                          8, 8, 8, 8, 12, 12, 12, 12);
    return _mm256_add_epi8(lane, _mm256_set1_epi8((char)(k / 2)));
}

LB_INLINE __m256i lb_q5_bits(int k) {
    return _mm256_set1_epi32(k % 2 ? (int)0x80402010u : 0x08040201);
}

LB_INLINE void lb_prefetch_x8(const int type, const void *w, int64_t b) {
    const size_t gb = LB_X8_BLOCK(type);
    const uintptr_t at = (uintptr_t)w + (uintptr_t)b * gb + LB_PF_BYTES;
    for (size_t line = 0; line < gb; line += 64) {
        _mm_prefetch((const char *)(at + line), _MM_HINT_T0);
    }
}

LB_INLINE __m256i lb_bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* acc + lane-wise sums of four products u[i] * s[i], u unsigned. */
LB_INLINE __m256i lb_dp_acc(__m256i acc, __m256i u, __m256i s) {
#if LB_X86_VNNI
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

/* The nibbles of a packed Q4 block's 128 quant bytes as 8 vectors of
 * bytes 0..15: vector k < 4 the low nibbles of bytes 32k.., k >= 4 the high
 * nibbles of bytes 32(k - 4).. */
LB_INLINE void lb_nibbles_x8(const uint8_t *qs, __m256i q[8]) {
    const __m256i m4 = _mm256_set1_epi8(15);
    LB_UNROLL
    for (int k = 0; k < 4; k++) {
        const __m256i v = lb_loadu256(qs + 32 * k);
        q[k] = _mm256_and_si256(v, m4);
        q[k + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    }
}

/* The 32 quants of block b of the 8 rows as 8 vectors, vector k holding the
 * row's elements 4k..4k+3 in lane r (Q4: low nibbles are elements 0..15,
 * high ones 16..31, so k < 4 takes low nibbles and k >= 4 high ones), and
 * the 8 scales. */
LB_INLINE __m256 lb_unpack_x8(const int type, const void *w, int64_t b, __m256i q[8], __m256 *mins) {
    if (type == LB_TYPE_Q5_0) {
        const lb_block_x8_q5 *x = (const lb_block_x8_q5 *)w + b;
        const __m256i words = lb_loadu256(x->qh);
        lb_nibbles_x8(x->qs, q);
        LB_UNROLL
        for (int k = 0; k < 8; k++) {
            const __m256i bits = _mm256_and_si256(_mm256_shuffle_epi8(words, lb_q5_spread(k)), lb_q5_bits(k));
            const __m256i high = _mm256_cmpeq_epi8(bits, lb_q5_bits(k));
            q[k] = _mm256_or_si256(q[k], _mm256_and_si256(high, _mm256_set1_epi8(16)));
        }
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)x->d));
    }
    if (type == LB_TYPE_Q4_1) {
        const lb_block_x8_q41 *x = (const lb_block_x8_q41 *)w + b;
        lb_nibbles_x8(x->qs, q);
        *mins = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)x->m));
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)x->d));
    }
    const lb_block_x8_q4 *x = (const lb_block_x8_q4 *)w + b;
    lb_nibbles_x8(x->qs, q);
    if (type == LB_TYPE_IQ4_NL) {
        const __m256i levels = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)lb_kvalues_iq4nl));
        const __m256i table = LB_X86_VNNI ? _mm256_xor_si256(levels, _mm256_set1_epi8((char)0x80)) : levels;
        LB_UNROLL
        for (int k = 0; k < 8; k++) {
            q[k] = _mm256_shuffle_epi8(table, q[k]);
        }
    }
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)x->d));
}

/* Blocks b0..b0+cnt-1 (cnt <= 4, b0 a multiple of 4) of a group against nc
 * activation rows; block b0 + i adds into acc[c][i] (lb_fold4's partial sum
 * i) with the reference's float steps, (float)isum * (dx * dy). */
LB_INLINE void lb_group_x8(const int type, const void *w, const uint8_t *a, size_t a_stride, const lb_q8_info *yi,
                           int64_t yi_stride, int64_t b0, const int cnt, const int nc, __m256 acc[][4]) {
    const int bias_shift = LB_X8_BIAS_SHIFT(type);
    const int signed_w = LB_X8_SIGNED(type);
    LB_UNROLL
    for (int i = 0; i < 4; i++) {
        if (i >= cnt) {
            break;
        }
        __m256i q[8];
        if (nc == 1) {
            lb_prefetch_x8(type, w, b0 + i);
        }
        __m256 mx = _mm256_setzero_ps();
        const __m256 dx = lb_unpack_x8(type, w, b0 + i, q, &mx);
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            const int8_t *yq = lb_x8_act(type, a + (size_t)c * a_stride, b0 + i);
            const lb_q8_info *inf = yi + c * yi_stride + b0 + i;
            /* start from -offset * sum, so the products land on the exact isum */
            __m256i is = _mm256_setzero_si256();
            if (bias_shift) {
                is = _mm256_sub_epi32(is, _mm256_slli_epi32(_mm256_set1_epi32(inf->sum), bias_shift));
            }
            LB_UNROLL
            for (int k = 0; k < 8; k++) {
                const __m256i yb = lb_bcast4(yq + 4 * k);
                is = signed_w ? lb_dp_acc(is, _mm256_sign_epi8(q[k], q[k]), _mm256_sign_epi8(yb, q[k]))
                              : lb_dp_acc(is, q[k], yb);
            }
            __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dx, _mm256_set1_ps(inf->d)));
            if (type == LB_TYPE_Q4_1) { /* + m * s, as lb_vec_dot_q4_1_q8_1 */
                t = _mm256_add_ps(t, _mm256_mul_ps(mx, _mm256_set1_ps(inf->s)));
            }
            acc[c][i] = _mm256_add_ps(acc[c][i], t);
        }
    }
}

/* lb_group_x8 for Q8_0 against Q16: 16 steps of two quants of each row,
 * widened to int16, against two activation values broadcast to every lane;
 * (float)isum * (dx * dy) as lb_vec_dot_q8_0_q16. */
LB_INLINE void lb_group_x8_q8(const void *w, const uint8_t *a, size_t a_stride, int64_t b0, const int cnt,
                              const int nc, __m256 acc[][4]) {
    LB_UNROLL
    for (int i = 0; i < 4; i++) {
        if (i >= cnt) {
            break;
        }
        if (nc == 1) {
            lb_prefetch_x8(LB_TYPE_Q8_0, w, b0 + i);
        }
        const lb_block_x8_q8 *x = (const lb_block_x8_q8 *)w + b0 + i;
        const lb_block_q16 *y[LB_MULTI_MAX];
        __m256i is[LB_MULTI_MAX];
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            y[c] = (const lb_block_q16 *)(a + (size_t)c * a_stride) + b0 + i;
            is[c] = _mm256_setzero_si256();
        }
        LB_UNROLL
        for (int k = 0; k < 16; k++) {
            const __m256i q = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x->qs + 16 * k)));
            LB_UNROLL
            for (int c = 0; c < nc; c++) {
                int32_t v;
                memcpy(&v, y[c]->qs + 2 * k, sizeof v);
                is[c] = lb_madd_acc(is[c], q, _mm256_set1_epi32(v));
            }
        }
        const __m256 dx = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)x->d));
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            const __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(is[c]), _mm256_mul_ps(dx, _mm256_set1_ps(y[c]->d)));
            acc[c][i] = _mm256_add_ps(acc[c][i], t);
        }
    }
}

/* One group of 8 rows. */
LB_INLINE void lb_gemm_x8(const int type, int64_t n, float *s, int64_t ld_s, const void *w, const void *a,
                          size_t a_stride, const lb_q8_info *yi, int64_t yi_stride, const int nc) {
    const int64_t nb = n / 32;
    __m256 acc[LB_MULTI_MAX][4];
    for (int c = 0; c < nc; c++) {
        for (int i = 0; i < 4; i++) {
            acc[c][i] = _mm256_setzero_ps();
        }
    }
    int64_t b = 0;
    /* whole runs of 4 blocks with cnt a constant, so the block loop unrolls */
    for (; b + 4 <= nb; b += 4) {
        if (type == LB_TYPE_Q8_0) {
            lb_group_x8_q8(w, (const uint8_t *)a, a_stride, b, 4, nc, acc);
        } else {
            lb_group_x8(type, w, (const uint8_t *)a, a_stride, yi, yi_stride, b, 4, nc, acc);
        }
    }
    if (b < nb && type == LB_TYPE_Q8_0) {
        lb_group_x8_q8(w, (const uint8_t *)a, a_stride, b, (int)(nb - b), nc, acc);
    } else if (b < nb) {
        lb_group_x8(type, w, (const uint8_t *)a, a_stride, yi, yi_stride, b, (int)(nb - b), nc, acc);
    }
    for (int c = 0; c < nc; c++) {
        const __m256 f = _mm256_add_ps(_mm256_add_ps(acc[c][0], acc[c][2]), _mm256_add_ps(acc[c][1], acc[c][3]));
        _mm256_storeu_ps(s + c * ld_s, f);
    }
}

#if LB_X86_VNNI
/* ---- two groups at once in 512-bit vectors (AVX-512) ----------------------------
 * The same work as lb_group_x8 for 16 rows: lanes 0..7 are the first
 * group's rows, 8..15 the second's, so one broadcast of four activation
 * bytes feeds 16 rows and every instruction does twice the work. */

LB_INLINE __m512i lb_join256(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* lb_nibbles_x8 of two groups' blocks, the first group in the low halves. */
LB_INLINE void lb_nibbles_x16(const uint8_t *qs0, const uint8_t *qs1, __m512i q[8]) {
    const __m512i m4 = _mm512_set1_epi8(15);
    LB_UNROLL
    for (int k = 0; k < 4; k++) {
        const __m512i v = lb_join256(lb_loadu256(qs0 + 32 * k), lb_loadu256(qs1 + 32 * k));
        q[k] = _mm512_and_si512(v, m4);
        q[k + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    }
}

LB_INLINE __m512 lb_unpack_x16(const int type, const void *w0, const void *w1, int64_t b, __m512i q[8],
                               __m512 *mins) {
    const uint16_t *d0, *d1;
    if (type == LB_TYPE_Q4_1) {
        const lb_block_x8_q41 *x0 = (const lb_block_x8_q41 *)w0 + b, *x1 = (const lb_block_x8_q41 *)w1 + b;
        lb_nibbles_x16(x0->qs, x1->qs, q);
        const __m128i m0 = _mm_loadu_si128((const __m128i *)x0->m), m1 = _mm_loadu_si128((const __m128i *)x1->m);
        *mins = _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(m0), m1, 1));
        d0 = x0->d;
        d1 = x1->d;
    } else if (type == LB_TYPE_Q5_0) {
        const lb_block_x8_q5 *x0 = (const lb_block_x8_q5 *)w0 + b, *x1 = (const lb_block_x8_q5 *)w1 + b;
        const __m512i words = lb_join256(lb_loadu256(x0->qh), lb_loadu256(x1->qh));
        lb_nibbles_x16(x0->qs, x1->qs, q);
        LB_UNROLL
        for (int k = 0; k < 8; k++) {
            const __m512i spread = _mm512_shuffle_epi8(words, _mm512_broadcast_i64x4(lb_q5_spread(k)));
            const __mmask64 high = _mm512_test_epi8_mask(spread, _mm512_broadcast_i64x4(lb_q5_bits(k)));
            q[k] = _mm512_mask_add_epi8(q[k], high, q[k], _mm512_set1_epi8(16));
        }
        d0 = x0->d;
        d1 = x1->d;
    } else {
        const lb_block_x8_q4 *x0 = (const lb_block_x8_q4 *)w0 + b, *x1 = (const lb_block_x8_q4 *)w1 + b;
        lb_nibbles_x16(x0->qs, x1->qs, q);
        if (type == LB_TYPE_IQ4_NL) {
            const __m512i levels = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)lb_kvalues_iq4nl));
            const __m512i table = _mm512_xor_si512(levels, _mm512_set1_epi8((char)0x80));
            LB_UNROLL
            for (int k = 0; k < 8; k++) {
                q[k] = _mm512_shuffle_epi8(table, q[k]);
            }
        }
        d0 = x0->d;
        d1 = x1->d;
    }
    const __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)d0)),
                                              _mm_loadu_si128((const __m128i *)d1), 1);
    return _mm512_cvtph_ps(h);
}

LB_INLINE void lb_group_x16(const int type, const void *w0, const void *w1, const uint8_t *a, size_t a_stride,
                            const lb_q8_info *yi, int64_t yi_stride, int64_t b0, const int cnt, const int nc,
                            __m512 acc[][4]) {
    const int bias_shift = LB_X8_BIAS_SHIFT(type);
    LB_UNROLL
    for (int i = 0; i < 4; i++) {
        if (i >= cnt) {
            break;
        }
        if (nc == 1) {
            lb_prefetch_x8(type, w0, b0 + i);
            lb_prefetch_x8(type, w1, b0 + i);
        }
        __m512i q[8];
        __m512 mx = _mm512_setzero_ps();
        const __m512 dx = lb_unpack_x16(type, w0, w1, b0 + i, q, &mx);
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            const int8_t *yq = lb_x8_act(type, a + (size_t)c * a_stride, b0 + i);
            const lb_q8_info *inf = yi + c * yi_stride + b0 + i;
            __m512i is = _mm512_setzero_si512();
            if (bias_shift) {
                is = _mm512_sub_epi32(is, _mm512_slli_epi32(_mm512_set1_epi32(inf->sum), (unsigned)bias_shift));
            }
            LB_UNROLL
            for (int k = 0; k < 8; k++) {
                int32_t v;
                memcpy(&v, yq + 4 * k, sizeof v);
                is = _mm512_dpbusd_epi32(is, q[k], _mm512_set1_epi32(v));
            }
            __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dx, _mm512_set1_ps(inf->d)));
            if (type == LB_TYPE_Q4_1) {
                t = _mm512_add_ps(t, _mm512_mul_ps(mx, _mm512_set1_ps(inf->s)));
            }
            acc[c][i] = _mm512_add_ps(acc[c][i], t);
        }
    }
}

/* lb_group_x8_q8 for two groups. */
LB_INLINE void lb_group_x16_q8(const void *w0, const void *w1, const uint8_t *a, size_t a_stride, int64_t b0,
                               const int cnt, const int nc, __m512 acc[][4]) {
    LB_UNROLL
    for (int i = 0; i < 4; i++) {
        if (i >= cnt) {
            break;
        }
        if (nc == 1) {
            lb_prefetch_x8(LB_TYPE_Q8_0, w0, b0 + i);
            lb_prefetch_x8(LB_TYPE_Q8_0, w1, b0 + i);
        }
        const lb_block_x8_q8 *x0 = (const lb_block_x8_q8 *)w0 + b0 + i, *x1 = (const lb_block_x8_q8 *)w1 + b0 + i;
        const lb_block_q16 *y[LB_MULTI_MAX];
        __m512i is[LB_MULTI_MAX];
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            y[c] = (const lb_block_q16 *)(a + (size_t)c * a_stride) + b0 + i;
            is[c] = _mm512_setzero_si512();
        }
        LB_UNROLL
        for (int k = 0; k < 16; k++) {
            const __m256i both = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(x0->qs + 16 * k))),
                _mm_loadu_si128((const __m128i *)(x1->qs + 16 * k)), 1);
            const __m512i q = _mm512_cvtepi8_epi16(both);
            LB_UNROLL
            for (int c = 0; c < nc; c++) {
                int32_t v;
                memcpy(&v, y[c]->qs + 2 * k, sizeof v);
                is[c] = _mm512_dpwssd_epi32(is[c], q, _mm512_set1_epi32(v));
            }
        }
        const __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)x0->d)),
                                                  _mm_loadu_si128((const __m128i *)x1->d), 1);
        const __m512 dx = _mm512_cvtph_ps(h);
        LB_UNROLL
        for (int c = 0; c < nc; c++) {
            const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(is[c]), _mm512_mul_ps(dx, _mm512_set1_ps(y[c]->d)));
            acc[c][i] = _mm512_add_ps(acc[c][i], t);
        }
    }
}

/* Two groups: rows 0..15 from w0 (8 rows) and w1 (the next 8). */
LB_INLINE void lb_gemm_x16(const int type, int64_t n, float *s, int64_t ld_s, const void *w0, const void *w1,
                           const void *a, size_t a_stride, const lb_q8_info *yi, int64_t yi_stride, const int nc) {
    const int64_t nb = n / 32;
    __m512 acc[LB_MULTI_MAX][4];
    for (int c = 0; c < nc; c++) {
        for (int i = 0; i < 4; i++) {
            acc[c][i] = _mm512_setzero_ps();
        }
    }
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        if (type == LB_TYPE_Q8_0) {
            lb_group_x16_q8(w0, w1, (const uint8_t *)a, a_stride, b, 4, nc, acc);
        } else {
            lb_group_x16(type, w0, w1, (const uint8_t *)a, a_stride, yi, yi_stride, b, 4, nc, acc);
        }
    }
    if (b < nb && type == LB_TYPE_Q8_0) {
        lb_group_x16_q8(w0, w1, (const uint8_t *)a, a_stride, b, (int)(nb - b), nc, acc);
    } else if (b < nb) {
        lb_group_x16(type, w0, w1, (const uint8_t *)a, a_stride, yi, yi_stride, b, (int)(nb - b), nc, acc);
    }
    for (int c = 0; c < nc; c++) {
        const __m512 f = _mm512_add_ps(_mm512_add_ps(acc[c][0], acc[c][2]), _mm512_add_ps(acc[c][1], acc[c][3]));
        _mm512_storeu_ps(s + c * ld_s, f);
    }
}
#endif

/* n_groups consecutive groups: in pairs where 512-bit vectors serve. */
LB_INLINE void lb_gemm_groups(const int type, int64_t n, int64_t n_groups, float *s, int64_t ld_s, const void *w,
                              const void *a, size_t a_stride, const lb_q8_info *yi, int64_t yi_stride,
                              const int nc) {
    const size_t gbytes = (size_t)(n / 32) * LB_X8_BLOCK(type);
    int64_t g = 0;
#if LB_X86_VNNI
    for (; g + 2 <= n_groups; g += 2) {
        const uint8_t *w0 = (const uint8_t *)w + (size_t)g * gbytes;
        lb_gemm_x16(type, n, s + g * LB_PACK_ROWS, ld_s, w0, w0 + gbytes, a, a_stride, yi, yi_stride, nc);
    }
#endif
    for (; g < n_groups; g++) {
        lb_gemm_x8(type, n, s + g * LB_PACK_ROWS, ld_s, (const uint8_t *)w + (size_t)g * gbytes, a, a_stride, yi,
                   yi_stride, nc);
    }
}

#define LB_X86_GEMM_X8(name, type)                                                                         \
    static void lb_gx8_##name(int64_t n, int64_t ng, float *s, int64_t ld_s, const void *w, const void *a,  \
                              size_t as, const lb_q8_info *ys, int64_t yst, int nc) {                        \
        switch (nc) {                                                                                        \
        case 1: lb_gemm_groups(type, n, ng, s, ld_s, w, a, as, ys, yst, 1); break;                          \
        case 2: lb_gemm_groups(type, n, ng, s, ld_s, w, a, as, ys, yst, 2); break;                          \
        case 3: lb_gemm_groups(type, n, ng, s, ld_s, w, a, as, ys, yst, 3); break;                          \
        default: lb_gemm_groups(type, n, ng, s, ld_s, w, a, as, ys, yst, 4); break;                         \
        }                                                                                                    \
    }
LB_X86_GEMM_X8(q4_0, LB_TYPE_Q4_0)
LB_X86_GEMM_X8(q4_1, LB_TYPE_Q4_1)
LB_X86_GEMM_X8(q5_0, LB_TYPE_Q5_0)
LB_X86_GEMM_X8(iq4_nl, LB_TYPE_IQ4_NL)
LB_X86_GEMM_X8(q8_0, LB_TYPE_Q8_0)
#undef LB_X86_GEMM_X8

/* ---- entry points ---------------------------------------------------------------
 * For each kernel K(n, s, ld_s, w, a, a_stride, nc): a vec_dot (nc = 1) and
 * a multi-row version that instantiates K for each nc up to LB_MULTI_MAX. */

#define LB_X86_ENTRIES(name, K)                                                                             \
    static void lb_vd_##name(int64_t n, float *s, const void *w, const void *a) { K(n, s, 1, w, a, 0, 1); } \
    static void lb_vdm_##name(int64_t n, float *s, int64_t ld_s, const void *w, const void *a,             \
                              size_t a_stride, int nc) {                                                    \
        for (int c0 = 0; c0 < nc; c0 += LB_MULTI_MAX) {                                                     \
            const uint8_t *ac = (const uint8_t *)a + (size_t)c0 * a_stride;                                 \
            switch (nc - c0) {                                                                              \
            case 1: K(n, s + c0 * ld_s, ld_s, w, ac, a_stride, 1); break;                                   \
            case 2: K(n, s + c0 * ld_s, ld_s, w, ac, a_stride, 2); break;                                   \
            case 3: K(n, s + c0 * ld_s, ld_s, w, ac, a_stride, 3); break;                                   \
            default: K(n, s + c0 * ld_s, ld_s, w, ac, a_stride, 4); break;                                  \
            }                                                                                               \
        }                                                                                                   \
    }

#define LB_K_TYPED(fn, type)                                                                                \
    LB_INLINE void lb_k_##type(int64_t n, float *s, int64_t ld_s, const void *w, const void *a, size_t as, \
                               const int nc) {                                                              \
        fn(LB_TYPE_##type, n, s, ld_s, w, a, as, nc);                                                       \
    }

LB_K_TYPED(lb_dot_float, F32)
LB_K_TYPED(lb_dot_float, F16)
LB_K_TYPED(lb_dot_float, BF16)
LB_K_TYPED(lb_dot32, Q4_0)
LB_K_TYPED(lb_dot32, Q4_1)
LB_K_TYPED(lb_dot32, Q5_0)
LB_K_TYPED(lb_dot32, Q5_1)
LB_K_TYPED(lb_dot32, Q8_0)
LB_K_TYPED(lb_dot32, IQ4_NL)
#undef LB_K_TYPED

LB_INLINE void lb_k_Q4_K(int64_t n, float *s, int64_t ld_s, const void *w, const void *a, size_t as, const int nc) {
    lb_dot_q45_K(0, n, s, ld_s, w, a, as, nc);
}
LB_INLINE void lb_k_Q5_K(int64_t n, float *s, int64_t ld_s, const void *w, const void *a, size_t as, const int nc) {
    lb_dot_q45_K(1, n, s, ld_s, w, a, as, nc);
}

LB_X86_ENTRIES(f32, lb_k_F32)
LB_X86_ENTRIES(f16, lb_k_F16)
LB_X86_ENTRIES(bf16, lb_k_BF16)
LB_X86_ENTRIES(q4_0, lb_k_Q4_0)
LB_X86_ENTRIES(q4_1, lb_k_Q4_1)
LB_X86_ENTRIES(q5_0, lb_k_Q5_0)
LB_X86_ENTRIES(q5_1, lb_k_Q5_1)
LB_X86_ENTRIES(q8_0, lb_k_Q8_0)
LB_X86_ENTRIES(iq4_nl, lb_k_IQ4_NL)
LB_X86_ENTRIES(q2_K, lb_dot_q2_K)
LB_X86_ENTRIES(q3_K, lb_dot_q3_K)
LB_X86_ENTRIES(q4_K, lb_k_Q4_K)
LB_X86_ENTRIES(q5_K, lb_k_Q5_K)
LB_X86_ENTRIES(q6_K, lb_dot_q6_K)
#undef LB_X86_ENTRIES

/* The designated initialisers of a kernel table's vec_dot, vec_dot_multi
 * and from_float members. */
#define LB_X86_TABLE_BODY                                                                                     \
    .vec_dot = {[LB_TYPE_F32] = lb_vd_f32, [LB_TYPE_F16] = lb_vd_f16, [LB_TYPE_BF16] = lb_vd_bf16,             \
                [LB_TYPE_Q4_0] = lb_vd_q4_0, [LB_TYPE_Q4_1] = lb_vd_q4_1, [LB_TYPE_Q5_0] = lb_vd_q5_0,         \
                [LB_TYPE_Q5_1] = lb_vd_q5_1, [LB_TYPE_Q8_0] = lb_vd_q8_0, [LB_TYPE_IQ4_NL] = lb_vd_iq4_nl,     \
                [LB_TYPE_Q2_K] = lb_vd_q2_K, [LB_TYPE_Q3_K] = lb_vd_q3_K, [LB_TYPE_Q4_K] = lb_vd_q4_K,         \
                [LB_TYPE_Q5_K] = lb_vd_q5_K, [LB_TYPE_Q6_K] = lb_vd_q6_K},                                     \
    .vec_dot_multi = {[LB_TYPE_F32] = lb_vdm_f32, [LB_TYPE_F16] = lb_vdm_f16, [LB_TYPE_BF16] = lb_vdm_bf16,    \
                      [LB_TYPE_Q4_0] = lb_vdm_q4_0, [LB_TYPE_Q4_1] = lb_vdm_q4_1, [LB_TYPE_Q5_0] = lb_vdm_q5_0, \
                      [LB_TYPE_Q5_1] = lb_vdm_q5_1, [LB_TYPE_Q8_0] = lb_vdm_q8_0,                             \
                      [LB_TYPE_IQ4_NL] = lb_vdm_iq4_nl, [LB_TYPE_Q2_K] = lb_vdm_q2_K,                         \
                      [LB_TYPE_Q3_K] = lb_vdm_q3_K, [LB_TYPE_Q4_K] = lb_vdm_q4_K, [LB_TYPE_Q5_K] = lb_vdm_q5_K, \
                      [LB_TYPE_Q6_K] = lb_vdm_q6_K},                                                          \
    .from_float = {[LB_TYPE_Q8_0] = lb_x86_quantize_q8_0, [LB_TYPE_Q8_1] = lb_x86_quantize_q8_1,               \
                   [LB_TYPE_Q8_K] = lb_x86_quantize_q8_K, [LB_TYPE_Q16] = lb_x86_quantize_q16},                \
    .attn_dot = lb_x86_attn_dot, .attn_axpy = lb_x86_attn_axpy, .attn_scores_f16 = lb_x86_attn_scores_f16,     \
    .attn_wsum_f16 = lb_x86_attn_wsum_f16, .softmax = lb_x86_softmax, .swiglu = lb_x86_swiglu,                \
    .attn_scores_q8_0 = lb_x86_attn_scores_q8_0, .attn_wsum_q8_0 = lb_x86_attn_wsum_q8_0,                   \
    .gemm_x8 = {[LB_TYPE_Q4_0] = lb_gx8_q4_0, [LB_TYPE_Q4_1] = lb_gx8_q4_1, [LB_TYPE_Q5_0] = lb_gx8_q5_0,        \
                [LB_TYPE_IQ4_NL] = lb_gx8_iq4_nl, [LB_TYPE_Q8_0] = lb_gx8_q8_0}

#endif /* LB_X86_SIMD_H */
