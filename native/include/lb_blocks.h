/*
 * lb_blocks.h - the quantized block layouts, byte for byte as GGML stores them
 * in GGUF files.
 *
 * The field order is the on-disk layout: never reorder, pad or resize a field.
 * Half-precision fields are IEEE binary16 bit patterns (uint16_t), decoded with
 * lb_fp16_to_fp32. Multi-byte fields are little-endian, as in every GGUF file
 * Lowbit reads. Element i of a block is the i-th weight of that block's slice of
 * the row; the comments on qs/qh say which bits hold it.
 *
 * Q8_1 and Q8_K are activation formats: the forward pass encodes a row of
 * activations into them before a dot product, and no model stores them.
 */
#ifndef LB_BLOCKS_H
#define LB_BLOCKS_H

#include <stdint.h>

#define LB_QK4_0 32
#define LB_QK4_1 32
#define LB_QK5_0 32
#define LB_QK5_1 32
#define LB_QK8_0 32
#define LB_QK8_1 32
#define LB_QK4_NL 32
#define LB_QK_K 256           /* super-block size of the K-quants */
#define LB_K_SCALE_SIZE 12    /* bytes of packed 6-bit scales in Q3_K, Q4_K, Q5_K */

/* ---- 32-element blocks -------------------------------------------------- */

/* 4.5 bits per weight. w[i] = d * (q[i] - 8). */
typedef struct {
    uint16_t d;                 /* fp16 scale */
    uint8_t qs[LB_QK4_0 / 2];   /* q[i] in the low nibble of qs[i], q[i+16] in the high nibble */
} lb_block_q4_0;
_Static_assert(sizeof(lb_block_q4_0) == 2 + LB_QK4_0 / 2, "wrong q4_0 block size");

/* 5 bits per weight. w[i] = d * q[i] + m. */
typedef struct {
    uint16_t d;                 /* fp16 scale */
    uint16_t m;                 /* fp16 minimum (offset) */
    uint8_t qs[LB_QK4_1 / 2];   /* nibbles as in q4_0 */
} lb_block_q4_1;
_Static_assert(sizeof(lb_block_q4_1) == 2 * 2 + LB_QK4_1 / 2, "wrong q4_1 block size");

/* 5.5 bits per weight. w[i] = d * (q[i] - 16). */
typedef struct {
    uint16_t d;                 /* fp16 scale */
    uint8_t qh[4];              /* bit 4 of q[i] is bit i of this little-endian uint32 */
    uint8_t qs[LB_QK5_0 / 2];   /* low 4 bits of q[i], nibbles as in q4_0 */
} lb_block_q5_0;
_Static_assert(sizeof(lb_block_q5_0) == 2 + 4 + LB_QK5_0 / 2, "wrong q5_0 block size");

/* 6 bits per weight. w[i] = d * q[i] + m. */
typedef struct {
    uint16_t d;                 /* fp16 scale */
    uint16_t m;                 /* fp16 minimum (offset) */
    uint8_t qh[4];              /* bit 4 of q[i], as in q5_0 */
    uint8_t qs[LB_QK5_1 / 2];   /* low 4 bits of q[i], nibbles as in q4_0 */
} lb_block_q5_1;
_Static_assert(sizeof(lb_block_q5_1) == 2 * 2 + 4 + LB_QK5_1 / 2, "wrong q5_1 block size");

/* 8.5 bits per weight. w[i] = d * qs[i]. */
typedef struct {
    uint16_t d;                 /* fp16 scale */
    int8_t qs[LB_QK8_0];        /* quants */
} lb_block_q8_0;
_Static_assert(sizeof(lb_block_q8_0) == 2 + LB_QK8_0, "wrong q8_0 block size");

/* 9 bits per weight; activations only. x[i] ~ d * qs[i].
 * The gguf Python package still lists the older 40-byte layout with float d
 * and s; GGML has used this 36-byte one since, and it never reaches a file. */
typedef struct {
    uint16_t d;                 /* fp16 scale */
    uint16_t s;                 /* fp16 of d * sum(qs), taken before d is rounded: lets a
                                   q4_1/q5_1 dot product apply the weight minimum once per block */
    int8_t qs[LB_QK8_1];        /* quants */
} lb_block_q8_1;
_Static_assert(sizeof(lb_block_q8_1) == 2 * 2 + LB_QK8_1, "wrong q8_1 block size");

/* 17 bits per value; activations only (Lowbit's own, what Q8_0 weights are
 * multiplied with). x[i] ~ d * qs[i], |qs[i]| <= 32767. An int16 times an
 * int8 quant, summed over a block, stays far inside int32. */
#define LB_QK16 32
typedef struct {
    float d;                    /* fp32 scale: an fp16 one would cost more than the 16 bits gain */
    int16_t qs[LB_QK16];        /* quants */
} lb_block_q16;
_Static_assert(sizeof(lb_block_q16) == 4 + 2 * LB_QK16, "wrong q16 block size");

/* 4.5 bits per weight. w[i] = d * lb_kvalues_iq4nl[q[i]]: a 4-bit index into a
 * fixed non-linear table (denser near zero). */
typedef struct {
    uint16_t d;                 /* fp16 scale */
    uint8_t qs[LB_QK4_NL / 2];  /* table indices, nibbles as in q4_0 */
} lb_block_iq4_nl;
_Static_assert(sizeof(lb_block_iq4_nl) == 2 + LB_QK4_NL / 2, "wrong iq4_nl block size");

/* ---- 256-element super-blocks (K-quants) ----------------------------------
 * A super-block of 256 is cut into sub-blocks of 16 or 32 elements, each with a
 * small integer scale (and for some types a minimum) that multiplies the
 * super-block's fp16 d (and dmin). Where the quants of 256 elements are packed
 * several to a byte, the 256 are taken as 2 (or 4) runs of 128 (or 64): within a
 * run, byte l of the run's slice holds elements l, l+32, l+64, ... in successive
 * bit fields, starting with the lowest. */

/* 2.625 bits per weight. 16 sub-blocks of 16:
 * w[i] = d * (scales[i/16] & 15) * q[i] - dmin * (scales[i/16] >> 4), q in 0..3. */
typedef struct {
    uint8_t scales[LB_QK_K / 16]; /* per sub-block: scale in the low nibble, min in the high */
    uint8_t qs[LB_QK_K / 4];      /* 2-bit q: element 128*h + 32*k + l is bits 2k..2k+1 of qs[32*h + l] */
    uint16_t d;                   /* fp16 super-block scale of the scales */
    uint16_t dmin;                /* fp16 super-block scale of the mins */
} lb_block_q2_K;
_Static_assert(sizeof(lb_block_q2_K) == LB_QK_K / 16 + LB_QK_K / 4 + 2 * 2, "wrong q2_K block size");

/* 3.4375 bits per weight. 16 sub-blocks of 16, signed 6-bit scales:
 * w[i] = d * (sc[i/16] - 32) * (q[i] - (hbit[i] ? 0 : 4)), q in 0..3. */
typedef struct {
    uint8_t hmask[LB_QK_K / 8];   /* hbit of element 32*k + l is bit k of hmask[l] */
    uint8_t qs[LB_QK_K / 4];      /* low 2 bits, packed as in q2_K */
    uint8_t scales[LB_K_SCALE_SIZE]; /* sc[j] (6 bits): low 4 bits are the low (j < 8) or high
                                        (j >= 8) nibble of byte j % 8; high 2 bits are bits
                                        2*(j/4)..2*(j/4)+1 of byte 8 + j % 4 */
    uint16_t d;                   /* fp16 super-block scale */
} lb_block_q3_K;
_Static_assert(sizeof(lb_block_q3_K) == LB_QK_K / 8 + LB_QK_K / 4 + LB_K_SCALE_SIZE + 2,
               "wrong q3_K block size");

/* 4.5 bits per weight. 8 sub-blocks of 32, unsigned 6-bit scales and mins:
 * w[i] = d * sc[i/32] * q[i] - dmin * mn[i/32], q in 0..15. */
typedef struct {
    uint16_t d;                   /* fp16 super-block scale of the scales */
    uint16_t dmin;                /* fp16 super-block scale of the mins */
    uint8_t scales[LB_K_SCALE_SIZE]; /* for j < 4: sc[j] = b[j] & 63, mn[j] = b[j+4] & 63;
                                        for j >= 4: sc[j] = (b[j+4] & 15) | (b[j-4] >> 6) << 4,
                                        mn[j] = (b[j+4] >> 4) | (b[j] >> 6) << 4 */
    uint8_t qs[LB_QK_K / 2];      /* 4-bit q: element 64*c + 32*k + l is nibble k of qs[32*c + l] */
} lb_block_q4_K;
_Static_assert(sizeof(lb_block_q4_K) == 2 * 2 + LB_K_SCALE_SIZE + LB_QK_K / 2, "wrong q4_K block size");

/* 5.5 bits per weight. As q4_K with a fifth bit: q in 0..31. */
typedef struct {
    uint16_t d;                   /* fp16 super-block scale of the scales */
    uint16_t dmin;                /* fp16 super-block scale of the mins */
    uint8_t scales[LB_K_SCALE_SIZE]; /* packed as in q4_K */
    uint8_t qh[LB_QK_K / 8];      /* bit 4 of element 32*k + l is bit k of qh[l] */
    uint8_t qs[LB_QK_K / 2];      /* low 4 bits, packed as in q4_K */
} lb_block_q5_K;
_Static_assert(sizeof(lb_block_q5_K) == 2 * 2 + LB_K_SCALE_SIZE + LB_QK_K / 8 + LB_QK_K / 2,
               "wrong q5_K block size");

/* 6.5625 bits per weight. 16 sub-blocks of 16, int8 scales:
 * w[i] = d * scales[i/16] * (q[i] - 32), q in 0..63. */
typedef struct {
    uint8_t ql[LB_QK_K / 2];      /* low 4 bits: element 128*h + 64*k + l is nibble k of ql[64*h + l] */
    uint8_t qh[LB_QK_K / 4];      /* high 2 bits: element 128*h + 32*k + l is bits 2k..2k+1 of
                                     qh[32*h + l] */
    int8_t scales[LB_QK_K / 16];  /* signed sub-block scales */
    uint16_t d;                   /* fp16 super-block scale */
} lb_block_q6_K;
_Static_assert(sizeof(lb_block_q6_K) == LB_QK_K / 2 + LB_QK_K / 4 + LB_QK_K / 16 + 2, "wrong q6_K block size");

/* 9.125 bits per weight; activations only. x[i] ~ d * qs[i]. */
typedef struct {
    float d;                      /* fp32 scale: the K-quant dot products need the precision */
    int8_t qs[LB_QK_K];           /* quants */
    int16_t bsums[LB_QK_K / 16];  /* sum of qs[16*j .. 16*j+15]: the min terms of q2_K/q4_K/q5_K
                                     then cost one multiply per sub-block */
} lb_block_q8_K;
_Static_assert(sizeof(lb_block_q8_K) == 4 + LB_QK_K + LB_QK_K / 16 * 2, "wrong q8_K block size");

#endif /* LB_BLOCKS_H */
