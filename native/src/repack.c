/* Weights repacked at load into groups of 8 interleaved rows (the layout is
 * described in kernels/kernels.h), and the scalar kernels for that layout,
 * which define its results: bit for bit those of the type's reference
 * vec_dot on the unpacked row. */
#include "../kernels/kernels.h"
#include "lb_internal.h"

int lb_pack_x8_type(int32_t type) {
    return type == LB_TYPE_Q4_0 || type == LB_TYPE_Q4_1 || type == LB_TYPE_Q5_0 || type == LB_TYPE_IQ4_NL ||
           type == LB_TYPE_Q8_0;
}

/* A supported source block is an fp16 scale, then Q4_1's fp16 minimum or
 * Q5_0's 4 bytes of high bits, then the quant bytes (16 nibble bytes, or
 * Q8_0's 32 int8); a packed block holds the 8 rows' scales, their middle
 * fields, and the interleaved quants. */
typedef struct lb_x8_layout {
    size_t qh;     /* bytes of the middle field per row */
    size_t qbytes; /* quant bytes per row */
    unsigned chunk_log2; /* log2 of the consecutive quant bytes of a row (a shift: packing
                            a model's weights at load is a loop over every byte) */
} lb_x8_layout;

static lb_x8_layout lb_x8_layout_of(int32_t type) {
    lb_x8_layout l = {type == LB_TYPE_Q5_0 ? 4u : type == LB_TYPE_Q4_1 ? 2u : 0u, type == LB_TYPE_Q8_0 ? 32u : 16u,
                      type == LB_TYPE_Q8_0 ? 1u : 2u};
    return l;
}

/* Where quant byte j of row r lies in a packed block's quant bytes. */
static inline size_t lb_x8_q_index(const lb_x8_layout *l, int r, size_t j) {
    const unsigned c = l->chunk_log2;
    return ((j >> c) << c) * LB_PACK_ROWS + ((size_t)r << c) + (j & ((1u << c) - 1));
}

/* Where row r's middle field and quant byte j lie in a packed block. */
static size_t lb_x8_at_qh(const lb_x8_layout *l, int r) { return 2 * LB_PACK_ROWS + l->qh * (size_t)r; }
static size_t lb_x8_at_q(const lb_x8_layout *l, int r, size_t j) {
    return 2 * LB_PACK_ROWS + l->qh * LB_PACK_ROWS + lb_x8_q_index(l, r, j);
}

void lb_pack_x8(int32_t type, const void *src, int64_t nrows, int64_t n, void *dst) {
    const lb_x8_layout l = lb_x8_layout_of(type);
    const size_t bsize = 2 + l.qh + l.qbytes;
    const int64_t nb = n / 32;
    const size_t row = (size_t)nb * bsize;
    for (int64_t g = 0; g < nrows / LB_PACK_ROWS; g++) {
        const uint8_t *rows = (const uint8_t *)src + (size_t)g * LB_PACK_ROWS * row;
        uint8_t *out = (uint8_t *)dst + (size_t)g * LB_PACK_ROWS * row;
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *ob = out + (size_t)b * LB_PACK_ROWS * bsize;
            for (int r = 0; r < LB_PACK_ROWS; r++) {
                const uint8_t *ib = rows + (size_t)r * row + (size_t)b * bsize;
                memcpy(ob + 2 * r, ib, 2);
                memcpy(ob + lb_x8_at_qh(&l, r), ib + 2, l.qh);
                for (size_t j = 0; j < l.qbytes; j++) {
                    ob[lb_x8_at_q(&l, r, j)] = ib[2 + l.qh + j];
                }
            }
        }
    }
}

void lb_unpack_x8_row(int32_t type, const void *packed, int64_t n, int64_t row, void *dst) {
    const lb_x8_layout l = lb_x8_layout_of(type);
    const size_t bsize = 2 + l.qh + l.qbytes;
    const int64_t nb = n / 32;
    const int r = (int)(row % LB_PACK_ROWS);
    const uint8_t *grp = (const uint8_t *)packed + (size_t)(row / LB_PACK_ROWS) * LB_PACK_ROWS * (size_t)nb * bsize;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *ob = grp + (size_t)b * LB_PACK_ROWS * bsize;
        uint8_t *ib = (uint8_t *)dst + (size_t)b * bsize;
        memcpy(ib, ob + 2 * r, 2);
        memcpy(ib + 2, ob + lb_x8_at_qh(&l, r), l.qh);
        for (size_t j = 0; j < l.qbytes; j++) {
            ib[2 + l.qh + j] = ob[lb_x8_at_q(&l, r, j)];
        }
    }
}

/* Quant byte j (0..qbytes-1) of row r in a packed block's qs. */
static inline uint8_t lb_x8_byte(const lb_x8_layout *l, const void *qs, int r, int j) {
    return ((const uint8_t *)qs)[lb_x8_q_index(l, r, (size_t)j)];
}

/* The kernels differ only in how a row's 32 quants decode to integers; the
 * float work is the type's reference vec_dot's, block by block (Q4_1 adds
 * m * s against Q8_1, Q8_0 scales against Q16, the others against Q8_0). */
static void lb_gemm_x8_ref(int32_t type, int64_t n, int64_t n_groups, float *s, int64_t ld_s, const void *w,
                           const void *a, size_t a_stride, int nc) {
    const int64_t nb = n / 32;
    const lb_x8_layout l = lb_x8_layout_of(type);
    const size_t bsize = LB_PACK_ROWS * (2 + l.qh + l.qbytes);
    for (int64_t g = 0; g < n_groups; g++) {
        const uint8_t *wg = (const uint8_t *)w + (size_t)g * (size_t)nb * bsize;
        for (int c = 0; c < nc; c++) {
            const lb_block_q8_0 *y = (const lb_block_q8_0 *)((const uint8_t *)a + (size_t)c * a_stride);
            const lb_block_q8_1 *y1 = (const lb_block_q8_1 *)((const uint8_t *)a + (size_t)c * a_stride);
            const lb_block_q16 *y16 = (const lb_block_q16 *)((const uint8_t *)a + (size_t)c * a_stride);
            for (int r = 0; r < LB_PACK_ROWS; r++) {
                float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                for (int64_t b = 0; b < nb; b++) {
                    int32_t isum = 0;
                    uint16_t d;
                    if (type == LB_TYPE_Q8_0) {
                        const lb_block_x8_q8 *x = (const lb_block_x8_q8 *)wg + b;
                        for (int j = 0; j < 32; j++) {
                            isum += (int8_t)lb_x8_byte(&l, x->qs, r, j) * y16[b].qs[j];
                        }
                        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x->d[r]) * y16[b].d);
                        continue;
                    } else if (type == LB_TYPE_Q4_1) {
                        const lb_block_x8_q41 *x = (const lb_block_x8_q41 *)wg + b;
                        for (int j = 0; j < 16; j++) {
                            const uint8_t v = lb_x8_byte(&l, x->qs, r, j);
                            isum += (v & 15) * y1[b].qs[j] + (v >> 4) * y1[b].qs[j + 16];
                        }
                        acc[b & 3] += (float)isum * (lb_fp16_to_fp32(x->d[r]) * lb_fp16_to_fp32(y1[b].d)) +
                                      lb_fp16_to_fp32(x->m[r]) * lb_fp16_to_fp32(y1[b].s);
                        continue;
                    } else if (type == LB_TYPE_Q5_0) {
                        const lb_block_x8_q5 *x = (const lb_block_x8_q5 *)wg + b;
                        d = x->d[r];
                        for (int j = 0; j < 16; j++) {
                            const uint8_t v = lb_x8_byte(&l, x->qs, r, j);
                            const int lo = (v & 15) | (int)(((x->qh[r] >> j) & 1) << 4);
                            const int hi = (v >> 4) | (int)(((x->qh[r] >> (j + 16)) & 1) << 4);
                            isum += (lo - 16) * y[b].qs[j] + (hi - 16) * y[b].qs[j + 16];
                        }
                    } else {
                        const lb_block_x8_q4 *x = (const lb_block_x8_q4 *)wg + b;
                        d = x->d[r];
                        for (int j = 0; j < 16; j++) {
                            const uint8_t v = lb_x8_byte(&l, x->qs, r, j);
                            const int lo = type == LB_TYPE_Q4_0 ? (v & 15) - 8 : lb_kvalues_iq4nl[v & 15];
                            const int hi = type == LB_TYPE_Q4_0 ? (v >> 4) - 8 : lb_kvalues_iq4nl[v >> 4];
                            isum += lo * y[b].qs[j] + hi * y[b].qs[j + 16];
                        }
                    }
                    acc[b & 3] += (float)isum * (lb_fp16_to_fp32(d) * lb_fp16_to_fp32(y[b].d));
                }
                s[c * ld_s + g * LB_PACK_ROWS + r] = lb_fold4(acc);
            }
        }
    }
}

#define LB_GEMM_X8_REF(name, type)                                                                           \
    void lb_gemm_x8_##name##_ref(int64_t n, int64_t n_groups, float *s, int64_t ld_s, const void *w,         \
                                 const void *a, size_t a_stride, const lb_q8_info *yi, int64_t yi_stride,   \
                                 int nc) {                                                                  \
        (void)yi;                                                                                           \
        (void)yi_stride;                                                                                    \
        lb_gemm_x8_ref(type, n, n_groups, s, ld_s, w, a, a_stride, nc);                                     \
    }
LB_GEMM_X8_REF(q4_0, LB_TYPE_Q4_0)
LB_GEMM_X8_REF(q4_1, LB_TYPE_Q4_1)
LB_GEMM_X8_REF(q5_0, LB_TYPE_Q5_0)
LB_GEMM_X8_REF(iq4_nl, LB_TYPE_IQ4_NL)
LB_GEMM_X8_REF(q8_0, LB_TYPE_Q8_0)
